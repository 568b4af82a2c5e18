"""Measure, on a CUDA GPU, the per-stage rates that docs/cluster.md's capacity model assumes.

    python benchmarks/gpu_capacity.py [--frames 256] [--prompts 64] [--decode-batch 128]

The real architectures at full size with random bf16 weights (no checkpoint is needed to time them):
CLIP ViT-L/14 at 224 px (the visual encoder), and LLaMA-7B (LLaVA-1.5-7B's language model) for prefill of
256-token prompts and for decoding 128 tokens with transformers' `generate`, the path the rollout workers
and the Reasoning stage take today. FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on
the same calls. Each figure is printed beside the capacity model's assumption as a ratio: model FLOP
utilisation against the 40 % the model assumes (of 989 TFLOP/s dense bf16), and the measured decode step
against the 14.9 ms the model derives from HBM bandwidth.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, LlamaConfig, LlamaForCausalLM

PEAK_BF16_TFLOPS = 989.0
"""H100/H200 SXM dense bf16 peak, the capacity model's denominator."""
ASSUMED_MFU = 0.40
"""The capacity model's assumed model FLOP utilisation for encoders and prefill."""
MODEL_DECODE_STEP_MS = 14.9
"""The capacity model's decode step for B = 128 sequences at ~320 tokens of context (docs/cluster.md)."""
PROMPT_TOKENS = 256
NEW_TOKENS = 128


def clip_vit_l14() -> torch.nn.Module:
    config = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        patch_size=14, image_size=224, projection_dim=768,
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config)


def llama_7b() -> torch.nn.Module:
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def timed(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of `fn` on the GPU after two warm-up calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def counted_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def report(name: str, seconds: float, flops: int, items: int, unit: str) -> None:
    tflops = flops / seconds / 1e12
    mfu = tflops / PEAK_BF16_TFLOPS
    print(
        f"{name}: {items / seconds:,.0f} {unit}/s, {flops / items / 1e9:,.1f} GFLOP per {unit}, "
        f"{tflops:,.0f} TFLOP/s = {mfu:.0%} MFU ({mfu / ASSUMED_MFU:.2f}× the model's 40 %)"
    )


def time_visual_encoder(num_frames: int) -> None:
    vision = clip_vit_l14().eval()
    frames = torch.randn(num_frames, 3, 224, 224)

    def encode() -> object:
        return vision(pixel_values=frames).image_embeds

    report("CLIP ViT-L/14 224 px", timed(encode), counted_flops(encode), num_frames, "frame")


def time_prefill(lm: torch.nn.Module, num_prompts: int) -> float:
    """Prints prefill throughput; returns seconds per prompt."""
    prompts = torch.randint(0, lm.config.vocab_size, (num_prompts, PROMPT_TOKENS))

    def prefill() -> object:
        return lm(input_ids=prompts, logits_to_keep=1).logits

    seconds = timed(prefill)
    report("LLaMA-7B prefill, 256-token prompts", seconds, counted_flops(prefill), num_prompts, "prompt")
    return seconds / num_prompts


def time_generate(lm: torch.nn.Module, batch_size: int, prefill_s_per_prompt: float) -> None:
    batch = torch.randint(0, lm.config.vocab_size, (batch_size, PROMPT_TOKENS))

    def generate() -> object:
        return lm.generate(
            input_ids=batch, attention_mask=torch.ones_like(batch), max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None,
        )  # fmt: skip

    seconds = timed(generate, repeats=3)
    step_ms = (seconds - prefill_s_per_prompt * batch_size) / NEW_TOKENS * 1e3
    print(
        f"LLaMA-7B generate, B={batch_size}, {PROMPT_TOKENS} + {NEW_TOKENS} tokens: {seconds:.2f} s = "
        f"{batch_size / seconds:.1f} clips/s; decode step {step_ms:.1f} ms "
        f"({batch_size * 1e3 / step_ms:,.0f} tokens/s) = "
        f"{step_ms / MODEL_DECODE_STEP_MS:.2f}× the model's {MODEL_DECODE_STEP_MS} ms"
    )


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256, help="frames per visual-encoder forward")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per prefill forward")
    parser.add_argument("--decode-batch", type=int, default=128, help="sequences decoded together")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with torch.device("cuda"):
        time_visual_encoder(args.frames)
        lm = llama_7b().eval()
        time_generate(lm, args.decode_batch, time_prefill(lm, args.prompts))
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
