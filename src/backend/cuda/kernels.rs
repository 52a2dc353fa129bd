//! The kernel sources (kernels/*.cu), embedded in the binary, and the list of
//! functions each one exports. A module is compiled per .cu file.

/// kernels/common.cuh, pasted in place of `#include "common.cuh"`.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

const INCLUDE_LINE: &str = "#include \"common.cuh\"";

/// One .cu file: its name (the stem), source and exported `extern "C"` kernels.
#[derive(Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

impl KernelFile {
    /// The source with common.cuh pasted in, as NVRTC compiles it (no include
    /// path is needed, so nothing outside the binary is read).
    pub fn expanded(&self) -> String {
        self.source.replacen(INCLUDE_LINE, COMMON, 1)
    }
}

macro_rules! kernel_file {
    ($name:literal, [$($f:literal),* $(,)?]) => {
        KernelFile {
            name: $name,
            source: include_str!(concat!("../../../kernels/", $name, ".cu")),
            functions: &[$($f),*],
        }
    };
}

/// Every kernel file, in a fixed order.
pub const FILES: &[KernelFile] = &[
    kernel_file!("embedding", ["embedding_bf16"]),
    kernel_file!("rms_norm", ["rms_norm_bf16", "fused_add_rms_norm_bf16"]),
    kernel_file!("rotary_cache", ["rotary_qkv_cache_bf16"]),
    kernel_file!("silu_and_mul", ["silu_and_mul_bf16"]),
    kernel_file!(
        "paged_attention_decode",
        [
            "paged_attention_decode_bf16_hd16_g1",
            "paged_attention_decode_bf16_hd16_g2",
            "paged_attention_decode_bf16_hd16_g4",
            "paged_attention_decode_bf16_hd16_g8",
            "paged_attention_decode_bf16_hd32_g1",
            "paged_attention_decode_bf16_hd32_g2",
            "paged_attention_decode_bf16_hd32_g4",
            "paged_attention_decode_bf16_hd32_g8",
            "paged_attention_decode_bf16_hd64_g1",
            "paged_attention_decode_bf16_hd64_g2",
            "paged_attention_decode_bf16_hd64_g4",
            "paged_attention_decode_bf16_hd64_g8",
            "paged_attention_decode_bf16_hd128_g1",
            "paged_attention_decode_bf16_hd128_g2",
            "paged_attention_decode_bf16_hd128_g4",
            "paged_attention_decode_bf16_hd128_g8",
            "paged_attention_decode_bf16_hd256_g1",
            "paged_attention_decode_bf16_hd256_g2",
            "paged_attention_decode_bf16_hd256_g4",
            "paged_attention_reduce_bf16",
        ]
    ),
    kernel_file!(
        "prefill_attention",
        [
            "prefill_attention_bf16_hd16",
            "prefill_attention_bf16_hd32",
            "prefill_attention_bf16_hd64",
            "prefill_attention_bf16_hd128",
            "prefill_attention_bf16_hd256",
        ]
    ),
    kernel_file!("gather_last", ["gather_rows_bf16"]),
    kernel_file!("sampling", ["apply_penalties_f32", "apply_token_mask_f32", "sample_f32", "top_logprobs_f32"]),
    kernel_file!("dequant", ["dequant_q8_0_bf16", "dequant_q4_1_bf16"]),
    kernel_file!(
        "encoder",
        [
            "bert_embeddings_f32",
            "layer_norm_f32",
            "gelu_erf_f32",
            "encoder_attention_f32_hd32",
            "encoder_attention_f32_hd64",
            "encoder_attention_f32_hd128",
            "embedding_pool_f32",
        ]
    ),
];

/// The file exporting `function`, if any.
pub fn file_of(function: &str) -> Option<&'static KernelFile> {
    FILES.iter().find(|f| f.functions.contains(&function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_function_is_defined_in_its_source() {
        for f in FILES {
            let src = f.expanded();
            assert!(!src.lines().any(|l| l.trim() == INCLUDE_LINE), "{}: include not expanded", f.name);
            assert!(src.contains("KILN_DEVICE float bf16_to_f32"), "{}: common.cuh missing", f.name);
            for func in f.functions {
                // Plain kernels name themselves; macro-made ones are checked by their suffix pieces.
                let defined = src.contains(&format!(" {func}(")) || macro_defines(&src, func);
                assert!(defined, "{}.cu does not define {func}", f.name);
            }
        }
    }

    /// `paged_attention_decode_bf16_hd128_g4` comes from `DEFINE_DECODE(128, 4)`.
    fn macro_defines(src: &str, func: &str) -> bool {
        let nums: Vec<&str> = func
            .split('_')
            .filter_map(|p| p.strip_prefix("hd").or_else(|| p.strip_prefix('g')))
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
            .collect();
        src.contains(&format!("({})", nums.join(", ")))
    }

    #[test]
    fn every_cu_file_in_kernels_dir_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cu") {
                let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
                assert!(FILES.iter().any(|f| f.name == stem), "kernels/{stem}.cu is not in kernels::FILES");
            }
        }
    }

    /// Every dequant kernel expands a GGUF type the weight uploader hands to
    /// it (weights.rs names each `Quant` it passes to ops::dequant): a kernel
    /// nothing launches is untested code in every module load.
    #[test]
    fn every_dequant_kernel_is_used_by_the_weight_uploader() {
        let uploader = include_str!("weights.rs");
        for f in file_of("dequant_q8_0_bf16").unwrap().functions {
            let ty = f.strip_prefix("dequant_").and_then(|s| s.strip_suffix("_bf16")).unwrap().to_ascii_uppercase();
            assert!(uploader.contains(&format!("Quant::{ty}")), "{f} is never launched: weights.rs uploads no {ty} blocks");
        }
    }

    #[test]
    fn lookup_by_function() {
        assert_eq!(file_of("sample_f32").unwrap().name, "sampling");
        assert!(file_of("no_such_kernel").is_none());
    }
}
