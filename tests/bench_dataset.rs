//! Benchmark workloads: shapes of random and prefix prompts, ShareGPT
//! reading, and clear errors for malformed datasets.

use std::path::{Path, PathBuf};

use kiln::bench::dataset::{build, BenchRequest, Dataset, DatasetError, DatasetOptions, Prompt};
use kiln::bench::DatasetSpec;
use kiln::model::gguf::GgufFile;
use kiln::tokenizer::Tokenizer;
use serde_json::json;

fn opts(spec: &DatasetSpec) -> DatasetOptions<'_> {
    DatasetOptions {
        spec,
        num_prompts: 20,
        input_len: 50,
        output_len: None,
        range_ratio: 0.0,
        prefix_len: 0,
        vocab_size: 1000,
        seed: 1,
        tokenizer: None,
        text: false,
    }
}

fn ids(r: &BenchRequest) -> &[u32] {
    match &r.prompt {
        Prompt::Ids(v) => v,
        Prompt::Text(t) => panic!("expected ids, got text {t:?}"),
    }
}

fn default_tokenizer() -> Option<Tokenizer> {
    let path = kiln::launch::resolve_model(&None).map_err(|e| eprintln!("SKIP: the default model is unavailable: {e:#}")).ok()?;
    Some(Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap())
}

#[test]
fn random_prompts_have_the_asked_shape_and_follow_the_seed() {
    let spec = DatasetSpec::Random;
    let d = build(&DatasetOptions { range_ratio: 0.2, output_len: Some(100), ..opts(&spec) }).unwrap();
    assert_eq!(d.requests.len(), 20);
    for r in &d.requests {
        let v = ids(r);
        assert_eq!(r.prompt_len, v.len());
        assert!((40..=60).contains(&v.len()), "input length {}", v.len());
        assert!((80..=120).contains(&r.output_len), "output length {}", r.output_len);
        assert!(v.iter().all(|&id| id < 1000));
    }
    let lens: std::collections::BTreeSet<usize> = d.requests.iter().map(|r| r.prompt_len).collect();
    assert!(lens.len() > 3, "lengths vary with a range ratio: {lens:?}");
    let again = build(&DatasetOptions { range_ratio: 0.2, output_len: Some(100), ..opts(&spec) }).unwrap();
    assert_eq!(d.requests, again.requests, "same seed, same workload");
    let other = build(&DatasetOptions { seed: 2, ..opts(&spec) }).unwrap();
    assert_ne!(ids(&other.requests[0]), ids(&d.requests[0]));
    // Without a range ratio the lengths are exact.
    let fixed = build(&opts(&spec)).unwrap();
    assert!(fixed.requests.iter().all(|r| r.prompt_len == 50 && r.output_len == 128));
    // The probe shares nothing with the workload's start.
    assert_ne!(ids(&fixed.requests[0])[..4], *match &fixed.probe { Prompt::Ids(v) => v.as_slice(), _ => panic!() });
}

#[test]
fn prefix_prompts_share_exactly_the_prefix() {
    let spec = DatasetSpec::Prefix;
    let d = build(&DatasetOptions { prefix_len: 64, input_len: 16, ..opts(&spec) }).unwrap();
    let first = ids(&d.requests[0]);
    for r in &d.requests {
        let v = ids(r);
        assert_eq!(v.len(), 80);
        assert_eq!(v[..64], first[..64]);
    }
    let suffixes: std::collections::BTreeSet<&[u32]> = d.requests.iter().map(|r| &ids(r)[64..]).collect();
    assert_eq!(suffixes.len(), 20, "the unique parts differ");
}

#[test]
fn with_a_tokenizer_prompts_avoid_special_tokens_and_can_be_text() {
    let Some(tok) = default_tokenizer() else { return };
    let spec = DatasetSpec::Random;
    let d = build(&DatasetOptions { tokenizer: Some(&tok), ..opts(&spec) }).unwrap();
    for r in &d.requests {
        assert!(ids(r).iter().all(|&id| (id as usize) < tok.vocab_size() && !tok.is_special(id)));
    }
    let t = build(&DatasetOptions { tokenizer: Some(&tok), text: true, ..opts(&spec) }).unwrap();
    for (r, ids_r) in t.requests.iter().zip(&d.requests) {
        let Prompt::Text(text) = &r.prompt else { panic!("text was asked for") };
        // The same ids, decoded; the length is the text's own token count.
        assert_eq!(text, &tok.decode(ids(ids_r), false).unwrap());
        assert_eq!(r.prompt_len, tok.encode(text, false).unwrap().len());
    }
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn sharegpt(path: &Path, num: usize, output_len: Option<usize>, tok: Option<&Tokenizer>) -> Result<Dataset, DatasetError> {
    let spec = DatasetSpec::Sharegpt { path: path.to_path_buf() };
    build(&DatasetOptions { num_prompts: num, output_len, tokenizer: tok, ..opts(&spec) })
}

fn conv(turns: &[&str]) -> serde_json::Value {
    let turns: Vec<_> = turns.iter().enumerate().map(|(i, v)| json!({"from": if i % 2 == 0 {"human"} else {"gpt"}, "value": v})).collect();
    json!({"id": "x", "conversations": turns})
}

#[test]
fn sharegpt_takes_first_turns_and_reply_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let file = json!([
        conv(&["What is the capital of France, in one word?", "Paris is the capital of France.", "thanks", "welcome"]),
        conv(&["only one turn"]),
        conv(&["Name three colours of the rainbow please.", "Red, orange and yellow are three of them."]),
        conv(&["hi", "yo"]),
    ]);
    let path = write(dir.path(), "sg.json", &file.to_string());
    let d = sharegpt(&path, 2, Some(7), None).unwrap();
    let prompts: std::collections::BTreeSet<String> = d.requests.iter().map(|r| match &r.prompt {
        Prompt::Text(t) => t.clone(),
        _ => panic!("ShareGPT prompts are text"),
    }).collect();
    assert!(prompts.iter().all(|p| p.starts_with("What is") || p.starts_with("Name three") || p == "hi"), "{prompts:?}");
    assert!(d.requests.iter().all(|r| r.output_len == 7));
    // Fewer usable conversations than asked: repeated.
    assert_eq!(sharegpt(&path, 9, Some(7), None).unwrap().requests.len(), 9);
    let Some(tok) = default_tokenizer() else { return };
    let d = sharegpt(&path, 2, None, Some(&tok)).unwrap();
    for r in &d.requests {
        let Prompt::Text(p) = &r.prompt else { unreachable!() };
        assert_eq!(r.prompt_len, tok.encode(p, false).unwrap().len());
        let reply = if p.starts_with("What") { "Paris is the capital of France." } else { "Red, orange and yellow are three of them." };
        assert_eq!(r.output_len, tok.encode(reply, false).unwrap().len());
    }
    // "hi" / "yo" are under 4 tokens: left out as vLLM does.
    assert!(d.requests.iter().all(|r| r.prompt != Prompt::Text("hi".into())));
}

#[test]
fn malformed_datasets_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("nope.json");
    let cases: Vec<(PathBuf, Option<usize>, String)> = vec![
        (missing.clone(), Some(4), format!("cannot read dataset {}", missing.display())),
        (write(d, "a.json", "[{\"conversations\": ["), Some(4), "is not ShareGPT JSON: EOF while parsing".into()),
        (write(d, "b.json", "{\"conversations\": []}"), Some(4), "is not ShareGPT JSON: the top level is not a list".into()),
        (write(d, "c.json", &json!([conv(&["a", "b"]), {"id": 1}]).to_string()), Some(4), "entry 1 has no \"conversations\"".into()),
        (write(d, "d.json", &json!([{"conversations": "hello"}]).to_string()), Some(4), "entry 0: \"conversations\" is not a list".into()),
        (write(d, "e.json", &json!([{"conversations": [{"value": "q"}, {"value": 5}]}]).to_string()), Some(4), "entry 0, turn 1: no string \"value\"".into()),
        (write(d, "f.json", &json!([conv(&["just one"])]).to_string()), Some(4), "has no usable conversation".into()),
        (write(d, "g.json", "[]"), Some(4), "has no usable conversation".into()),
        (write(d, "h.json", &json!([conv(&["q", "a"])]).to_string()), None, "sharegpt without --tokenizer needs --output-len".into()),
    ];
    for (path, out_len, want) in cases {
        let e = sharegpt(&path, 2, out_len, None).err().unwrap_or_else(|| panic!("{} was accepted", path.display())).to_string();
        assert!(e.contains(&want), "{}: {e:?} lacks {want:?}", path.display());
    }
    for (spec, want) in [("foo", "unknown dataset \"foo\""), ("sharegpt:", "unknown dataset")] {
        let e = spec.parse::<DatasetSpec>().unwrap_err();
        assert!(e.contains(want) && e.contains("sharegpt:PATH"), "{e}");
    }
    let spec = DatasetSpec::Random;
    let e = build(&DatasetOptions { num_prompts: 0, ..opts(&spec) }).err().unwrap().to_string();
    assert!(e.contains("--num-prompts must be at least 1"), "{e}");
}
