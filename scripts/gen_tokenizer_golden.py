#!/usr/bin/env python3
"""Golden files for kiln's tokenizer tests (tests/tokenizer.rs).

Run from anywhere: `python3 scripts/gen_tokenizer_golden.py [--llama-cpp]`.
It creates its own venv at <repo>/.venv-tok (git-ignored; no torch) and writes
tests/fixtures/tokenizer/:

- smollm2.json: for the default model's GGUF (models/, fetched by
  models/fetch_default.sh), token ids and decoded text of a varied corpus,
  and chat templates rendered by transformers.
- spm-tiny.gguf + spm_tiny.json: a tiny SentencePiece ("llama") tokenizer
  trained here with sentencepiece (byte fallback, control tokens), written as
  GGUF with the `gguf` package, and what transformers' tokenizer loaded from
  that GGUF (and sentencepiece itself) gives on the same corpus.
- spm-tiny-hf/: that tokenizer saved by transformers as a Hugging Face
  directory (tokenizer.json, tokenizer_config.json), for `from_hf_dir`.
- templates.json: extra chat templates (whitespace control, tojson, loops,
  raise_exception) rendered by transformers' chat-template renderer.

References and their known flaws, recorded side by side:
- transformers (<5: 5.x needs torch to read GGUF) builds the GGUF tokenizer
  itself; it ignores `tokenizer.ggml.pre`. For SmolLM2 ("smollm": digits
  split one by one, then GPT-2 byte-level) the model's own tokenizer differs
  from transformers' on whitespace before digits and non-ASCII numerals, so
  `ids` is transformers' tokenizer with the pre-tokenizer that the GGUF names
  (the one of SmolLM2's tokenizer.json), and `ids_transformers_gguf` is the
  uncorrected output. Its BOS/EOS tokens from GGUF are also swapped/ignored,
  so ids are recorded without special tokens and bos/eos strings for chat
  templates are read from the GGUF ids with the `gguf` package.
- Decoded text is transformers' with clean_up_tokenization_spaces=False: kiln
  spells the tokens and never rewrites spaces around punctuation.
- With --llama-cpp, llama.cpp's own tokenizer (llama-cpp-python, built from
  source by pip: ~15 minutes on 2 cores) is recorded as `ids_llama_cpp`. The
  committed files were made with it; llama.cpp agrees with `ids` on every
  case of both models.
"""
import hashlib
import json
import os
import subprocess
import sys
import venv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, ".venv-tok")
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizer")
HF_DIR = os.path.join(OUT, "spm-tiny-hf")
PACKAGES = [
    "transformers==4.57.6",
    "tokenizers==0.22.2",
    "gguf==0.19.0",
    "sentencepiece==0.2.1",
    "protobuf",
    "jinja2",
    "numpy",
]


def ensure_venv():
    """Re-runs this script inside .venv-tok, creating it on first use."""
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        venv.create(VENV, with_pip=True)
    pkgs = list(PACKAGES)
    if "--llama-cpp" in sys.argv:
        pkgs.append("llama-cpp-python==0.3.36")
    subprocess.check_call([py, "-m", "pip", "install", "-q", *pkgs])
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "\n",
    "\n\n",
    "Ünïcödé façade naïve résumé — “quotes” ‘single’ … «guillemets»",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ❤️ 🦀",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!("{:?}", v);\n}',
    "a  b   c    d\t\te\n\n\nf \n g   \n\n",
    "   leading and trailing   ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y <|endoftext|> z<repo_name> <s>not</s>",
    "In 2024, 3.14159 * 2 = 6.28318; 1,000,000 and 0xFF, 1e-9, -42",
    "  99  bottles, x1 y22 ³ ½ ٣٤٥ 一二三",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism "
    "supercalifragilisticexpialidocious",
    "I'm sure you'll see they've done it, isn't it? DON'T SHOUT, We'RE here",
    "See https://example.com/path?q=1&x=2#frag and **bold** _it_ `code` [link](url)",
    '{"name": "kiln", "version": [0, 1], "ok": true, "nested": {"k": null}}',
    "Привет мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते दुनिया",
    "∀x∈ℝ, ∃y: x² + y² ≤ 1 → √(x·y) ≈ π/4 ∞ ∑ ∫",
    "tab\tsep\rcarriage\u00a0nbsp\u200bzero-width\u2028linesep",
    "!!!??? ... --- === *** ~~~ ___ ,,, ;;",
    "中文😀English日本",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕋𝕖𝕩𝕥 ǅ ﬁ ＡＢＣ",
    "e\u0301 a\u0308 n\u0303 decomposed",
    "Inference servers batch requests continuously: each step, the scheduler "
    "hands every running sequence a share of a token budget, so long prompts "
    "are prefilled in chunks while short ones keep decoding. The key-value "
    "cache is paged in blocks of sixteen tokens; blocks are shared by prefix.",
]

CONVERSATIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hi."},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "Réponds en français 🇫🇷"},
            {"role": "user", "content": "Line one\nLine two\n\tindented"},
            {"role": "assistant", "content": "D'accord."},
            {"role": "user", "content": "  spaces around  "},
        ],
        True,
    ),
    ([{"role": "user", "content": "No generation prompt"}], False),
]

# A SentencePiece training text: English and a little French and code; the
# rest of the corpus (CJK, emoji...) is spelled with byte-fallback tokens.
SPM_TEXT = """\
The quick brown fox jumps over the lazy dog. Hello world, hello there.
Inference servers batch requests continuously, and the scheduler hands every
running sequence a share of the token budget. The cache is paged in blocks.
Numbers like 2024 and 3.14 appear, as do words like résumé and naïve.
def main(): return fib(10) + fib(20)  # a comment about functions
Le renard brun saute par-dessus le chien paresseux. Bonjour le monde.
Tokens are pieces of words; pieces merge into longer pieces by score.
"""


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def patch_transformers_gguf():
    """transformers 4.x reads GGUF metadata without torch, but checks for torch
    first; the tokenizer path does not use it (return_tensors=False)."""
    import transformers.modeling_gguf_pytorch_utils as m

    m.is_torch_available = lambda: True


def gguf_meta(path):
    """Tokenizer metadata read with the `gguf` package."""
    from gguf import GGUFReader

    r = GGUFReader(path)

    def field(name):
        f = r.fields.get(name)
        return None if f is None else f.contents()

    tokens = field("tokenizer.ggml.tokens")
    bos, eos = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
    return {
        "pre": field("tokenizer.ggml.pre"),
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "bos_id": bos,
        "eos_id": eos,
        "add_bos": field("tokenizer.ggml.add_bos_token"),
    }


def model_pre_tokenizer(pre):
    """The pre-tokenizer of the model's own tokenizer.json for a GGUF pre name."""
    from tokenizers import pre_tokenizers

    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    raise SystemExit(f"no reference pre-tokenizer for tokenizer.ggml.pre={pre!r}")


def llama_cpp_tokenize(path):
    if "--llama-cpp" not in sys.argv:
        return None
    from llama_cpp import Llama

    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    return lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def record_cases(hf, reference, llama_cpp, extra=None):
    cases = []
    for text in CORPUS:
        raw = hf.encode(text, add_special_tokens=False)
        ids = reference(text)
        case = {
            "text": text,
            "ids": ids,
            "ids_transformers_gguf": raw,
            "decoded": hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "decoded_skip_special": hf.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            ),
        }
        if llama_cpp is not None:
            case["ids_llama_cpp"] = llama_cpp(text)
        if extra is not None:
            case.update(extra(text))
        cases.append(case)
    return cases


def record_chats(hf, meta):
    out = []
    for messages, gen in CONVERSATIONS:
        out.append(
            {
                "messages": messages,
                "add_generation_prompt": gen,
                "rendered": hf.apply_chat_template(
                    messages,
                    tokenize=False,
                    add_generation_prompt=gen,
                    bos_token=meta["bos_token"],
                    eos_token=meta["eos_token"],
                ),
            }
        )
    return out


def smollm2():
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    subprocess.check_call(["bash", os.path.join(REPO, "models", "fetch_default.sh")], stdout=subprocess.DEVNULL)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    path = os.path.join(REPO, "models", name)
    meta = gguf_meta(path)
    hf = AutoTokenizer.from_pretrained(os.path.join(REPO, "models"), gguf_file=name)
    fixed = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    fixed.pre_tokenizer = model_pre_tokenizer(meta["pre"])
    reference = lambda text: fixed.encode(text, add_special_tokens=False).ids  # noqa: E731
    return {
        "gguf": name,
        "gguf_sha256": sha256(path),
        "meta": meta,
        "vocab_size": len(hf),
        "cases": record_cases(hf, reference, llama_cpp_tokenize(path)),
        "chats": record_chats(hf, meta),
    }


def train_spm(workdir):
    import sentencepiece as spm

    text = os.path.join(workdir, "spm.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write(SPM_TEXT * 4)
    prefix = os.path.join(workdir, "spm")
    spm.SentencePieceTrainer.train(
        input=text,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        control_symbols=["<|im_start|>", "<|im_end|>"],
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


SPM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def write_spm_gguf(sp, path):
    """A GGUF with only metadata: a tiny llama config and the tokenizer."""
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("spm-tiny")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(SPM_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_tiny():
    import tempfile

    from transformers import AutoTokenizer

    name = "spm-tiny.gguf"
    path = os.path.join(OUT, name)
    with tempfile.TemporaryDirectory() as tmp:
        sp = train_spm(tmp)
        write_spm_gguf(sp, path)
    meta = gguf_meta(path)
    hf = AutoTokenizer.from_pretrained(OUT, gguf_file=name)
    # The same tokenizer saved as a Hugging Face directory (EOS set right:
    # transformers' GGUF loader takes it from the BOS id).
    hf.eos_token = meta["eos_token"]
    hf.save_pretrained(HF_DIR)
    os.remove(os.path.join(HF_DIR, "tokenizer.model"))  # the slow tokenizer's copy: unused
    hf_dir = AutoTokenizer.from_pretrained(HF_DIR)
    reference = lambda text: hf.encode(text, add_special_tokens=False)  # noqa: E731

    def extra(text):
        return {"ids_sentencepiece": sp.encode(text), "ids_hf_dir_with_special": hf_dir.encode(text)}

    return {
        "gguf": name,
        "gguf_sha256": sha256(path),
        "meta": meta,
        "vocab_size": len(hf),
        "cases": record_cases(hf, reference, llama_cpp_tokenize(path), extra),
        "chats": record_chats(hf, meta),
        "hf_dir_chats": record_chats(hf_dir, {"bos_token": hf_dir.bos_token, "eos_token": hf_dir.eos_token}),
    }


# Templates exercising the renderer: whitespace control (trim_blocks,
# lstrip_blocks, "-" markers), Python string methods, loop variables,
# namespace(), tojson, and raise_exception.
TEMPLATES = {
    "indented_blocks": (
        "{% for message in messages %}\n"
        "    {% if message.role == 'system' %}\n"
        "<<SYS>>{{ message.content | trim }}<</SYS>>\n"
        "    {% else %}\n"
        "{{ message.role | upper }}: {{ message.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "ASSISTANT:\n"
        "{% endif %}\n"
    ),
    "dash_markers": (
        "{{- bos_token }}\n"
        "{%- for message in messages %}\n"
        "    {{- '<|' + message['role'] + '|>\\n' }}\n"
        "    {{- message['content'] | trim + eos_token }}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
    ),
    "python_methods": (
        "{% for m in messages %}"
        "{{ loop.index }}/{{ loop.length }} {{ m.role.upper() }} "
        "{% if m.content.startswith('  ') %}[indented]{% endif %}"
        "{{ m.content.strip().replace('\\n', ' | ') }} "
        "{{ m.content.split()|length }} words{% if not loop.last %}; {% endif %}"
        "{% endfor %}"
    ),
    "namespace_and_json": (
        "{% set ns = namespace(users=0, last='') %}"
        "{% for m in messages %}{% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}"
        "{% set ns.last = m.content %}{% endif %}{% endfor %}"
        "users={{ ns.users }} last={{ ns.last | tojson }}\n"
        "{{ messages[0] | tojson }}\n"
        "{{ messages | tojson(indent=2) }}"
    ),
    "raises_without_user": (
        "{% if messages[-1]['role'] != 'user' %}"
        "{{ raise_exception('last message must come from the user') }}{% endif %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    ),
}


TEMPLATES["llama2"] = SPM_TEMPLATE

# Conversations some templates reject: ending with the assistant, and roles
# that do not alternate.
TEMPLATE_CONVERSATIONS = CONVERSATIONS + [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], False),
    ([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], True),
]


def templates():
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(OUT, gguf_file="spm-tiny.gguf")
    out = []
    for name, source in TEMPLATES.items():
        for messages, gen in TEMPLATE_CONVERSATIONS:
            case = {"name": name, "template": source, "messages": messages, "add_generation_prompt": gen}
            try:
                case["rendered"] = hf.apply_chat_template(
                    messages,
                    chat_template=source,
                    tokenize=False,
                    add_generation_prompt=gen,
                    bos_token="<s>",
                    eos_token="</s>",
                )
            except Exception as e:  # the template rejected the conversation
                case["error"] = str(e)
            out.append(case)
    return {"bos_token": "<s>", "eos_token": "</s>", "cases": out, "strftime": strftime_samples()}


def strftime_samples():
    """UTC dates as Python formats them, for kiln's strftime_now."""
    from datetime import datetime, timezone

    fmt = "%d %b %Y | %B %m %y | %a %A | %H:%M:%S | day %j | 100%%"
    stamps = [0, 951782400, 1_700_000_000, 1_709_164_800, 1_735_689_599, 4_102_444_800, 1_721_952_000]
    return [
        {"unix": t, "format": fmt, "out": datetime.fromtimestamp(t, timezone.utc).strftime(fmt)}
        for t in stamps
    ]


def write_json(name, data):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    ensure_venv()
    patch_transformers_gguf()
    import tokenizers
    import transformers

    os.makedirs(OUT, exist_ok=True)
    versions = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    write_json("smollm2.json", {"versions": versions, **smollm2()})
    write_json("spm_tiny.json", {"versions": versions, **spm_tiny()})
    write_json("templates.json", {"versions": versions, **templates()})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
