"""GeoMLLM: LLaVA-1.5 reads a clip's frame features and acoustic atoms, writes a trace and an answer, gives ψ.

Inputs. LLaVA's own CLIP tower and projector are bypassed: avgeo's frames are already encoded by GeoCLIP
(`avgeo.perception.visual`), so each frame's 512-d feature h_t becomes one soft token through a trainable
MLP (512 -> H -> GELU -> H, the shape of LLaVA-1.5's mm_projector), and each atom's scaled kernel z·w
through a second one (CLAP's space is not GeoCLIP's); both live in `FeatureProjector`. Soft tokens replace
the input embeddings of the prompt's `<frame>` / `<atom>` placeholders (`avgeo.reasoning.prompt`), where
the atoms are also written as text. Prompts are left-padded so that a batch generates together.

Outputs. `generate` samples with transformers' `generate` on those input embeddings; a completion ends
with `</answer>` (or `</s>`, or at `max_new_tokens`) and is read by `avgeo.reasoning.answer.parse_response`.
Completions are stored prompt-major ([p0 c0, …, p0 c(G−1), p1 c0, …]), as `generate` returns them.
Log-probabilities are those of softmax(logits / temperature), temperature 1 for greedy decoding; `top_p`
shapes what is sampled but not the log-probabilities (as in TRL and OpenRLHF), so `sequence_logprobs`,
which the learner and the reference call, recomputes exactly what `generate` reports.

ψ, the condition of the RFM head: the language model's final hidden state (after its last RMSNorm, i.e.
what lm_head reads), H wide. `psi_pooling="last"` (default) takes it at the completion's last token —
`</answer>` for a well-formed response, so ψ has read the whole trace and answer —; "mean" averages it
over the completion's tokens.

Checkpoints. `from_pretrained` reads a LLaVA directory or hub id (`llava-hf/llava-1.5-7b-hf`) or `tiny`
(`avgeo.reasoning.checkpoints`), and the projector from the `projector/` subdirectory that
`save_pretrained` writes. What a plain LLaVA checkpoint lacks — the projector, and embedding rows for the
tokens `add_geomllm_tokens` adds to its tokenizer when they outgrow the embedding matrix (new rows drawn
around the old rows' mean by transformers' `resize_token_embeddings`) — is initialised from a fixed seed,
so every process that loads the same checkpoint (rollout actors, learner, reference) holds the same weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoTokenizer, LlavaForConditionalGeneration, PreTrainedTokenizerFast

from avgeo.perception.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from avgeo.reasoning.checkpoints import resolve_llava
from avgeo.reasoning.prompt import ATOM_TOKEN, FRAME_TOKEN, SoundAtom, render_prompt
from avgeo.reasoning.tokenizer import ANSWER_CLOSE, add_geomllm_tokens

PROJECTOR_DIR = "projector"
"""Subdirectory of a GeoMLLM checkpoint holding the `FeatureProjector` (config.json + model.safetensors)."""

INIT_SEED = 0
"""Seed of what a plain LLaVA checkpoint lacks (projector, new token rows), drawn at load."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Parts of LLaVA that GeoMLLM bypasses: frozen, and left out of weight sync.
_BYPASSED_PREFIXES = ("llava.model.vision_tower.", "llava.model.multi_modal_projector.")


class MLLMInputError(ValueError):
    """Features, atoms, completions or synced weights that GeoMLLM cannot take; says which and the fix."""


@dataclass
class MLLMConfig:
    """Which LLaVA to load and how GeoMLLM prompts and samples it."""

    model: str = "tiny"
    """`tiny`, a local LLaVA directory (e.g. one written by `save_pretrained`) or a hub id."""
    max_new_tokens: int = 128
    """Most tokens per completion; longer responses are cut (and then fail to parse)."""
    temperature: float = 1.0
    """Sampling temperature; 0 decodes greedily."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 samples from the whole distribution."""
    num_frames: int = 8
    """Most `<frame>` soft tokens per prompt; longer clips are subsampled evenly."""
    max_atoms: int = 8
    """Most atoms per prompt; the first (strongest) are kept."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights' dtype."""
    psi_pooling: Literal["last", "mean"] = "last"
    """ψ from the final hidden state at the completion's last token, or its mean over the completion."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")
        if self.max_atoms < 0:
            raise ValueError(f"max_atoms must be >= 0, got {self.max_atoms}")


@dataclass
class ProjectorConfig:
    """Widths of the soft-token projector."""

    hidden_size: int
    """H, the language model's embedding width."""
    visual_dim: int = 512
    """Width of a frame feature (GeoCLIP: 512)."""
    atom_dim: int = 512
    """Width of an atom vector (CLAP's joint space: 512)."""


class FeatureProjector(nn.Module):
    """Frame features (..., visual_dim) and atom vectors (..., atom_dim) -> soft tokens (..., H)."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.frame = _two_layer_mlp(config.visual_dim, config.hidden_size)
        self.atom = _two_layer_mlp(config.atom_dim, config.hidden_size)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` into `directory`."""
        save_checkpoint(directory, self.config, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> FeatureProjector:
        """Load a directory written by `save_pretrained`."""
        config, state_dict = load_checkpoint(directory, ProjectorConfig)
        projector = cls(config)
        try:
            projector.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: weights do not fit its config.json: {exc}") from exc
        return projector


def _two_layer_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


@dataclass
class MLLMInputs:
    """B left-padded prompts, as input embeddings with the soft tokens in place."""

    inputs_embeds: torch.Tensor
    """(B, L, H); differentiable w.r.t. the projector."""
    attention_mask: torch.Tensor
    """(B, L) long, 0 on the left padding."""
    prompt_token_ids: torch.Tensor
    """(B, L) long: the prompt's token ids (placeholders included), the pad id on the padding."""


@dataclass
class Generation:
    """N = B·G completions, prompt-major."""

    texts: list[str]
    """N decoded completions, special tokens (`</s>`, padding) left out."""
    token_ids: torch.Tensor
    """(N, T') long: sampled ids, the pad id after a completion's end."""
    mask: torch.Tensor
    """(N, T') long: 1 on a completion's tokens, its final `</answer>` or `</s>` included."""
    logprobs: torch.Tensor
    """(N, T') float32: log-probability of each sampled token (see module doc); 0 where mask is 0."""


class GeoMLLM(nn.Module):
    """LLaVA-1.5 with soft tokens for frames and atoms, sampling, log-probabilities and ψ."""

    def __init__(
        self,
        llava: LlavaForConditionalGeneration,
        tokenizer: PreTrainedTokenizerFast,
        projector: FeatureProjector,
        config: MLLMConfig,
    ) -> None:
        super().__init__()
        self.llava = llava
        self.projector = projector
        self.tokenizer = tokenizer
        self.config = config
        llava.model.vision_tower.requires_grad_(False)
        llava.model.multi_modal_projector.requires_grad_(False)
        self._frame_id, self._atom_id, answer_close_id = tokenizer.convert_tokens_to_ids(
            [FRAME_TOKEN, ATOM_TOKEN, ANSWER_CLOSE]
        )
        self._stop_ids = [tokenizer.eos_token_id, answer_close_id]

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str | Path | None = None, config: MLLMConfig | None = None
    ) -> GeoMLLM:
        """Load `name_or_dir` (default: `config.model`) with `config`'s settings; see the module doc."""
        config = config or MLLMConfig()
        if name_or_dir is not None:
            config = dataclasses.replace(config, model=str(name_or_dir))
        source = resolve_llava(config.model)
        dtype = _DTYPES[config.dtype]
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            llava = LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: cannot load a LLaVA checkpoint ({exc}); pass 'tiny', a local LLaVA directory "
                "(e.g. a download of llava-hf/llava-1.5-7b-hf) or a hub id on a machine that reaches the "
                "hub with HF_HUB_OFFLINE unset"
            ) from exc
        projector_dir = Path(source) / PROJECTOR_DIR
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            add_geomllm_tokens(tokenizer)
            if len(tokenizer) > llava.get_input_embeddings().num_embeddings:
                llava.resize_token_embeddings(len(tokenizer))
            if projector_dir.is_dir():
                projector = FeatureProjector.from_pretrained(projector_dir)
            else:
                projector = FeatureProjector(
                    ProjectorConfig(hidden_size=llava.config.text_config.hidden_size)
                )
        return cls(llava.eval(), tokenizer, projector.to(dtype), config)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write LLaVA, the tokenizer and `projector/` into `directory`; `from_pretrained` reads it back."""
        self.llava.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.projector.save_pretrained(Path(directory) / PROJECTOR_DIR)

    @property
    def psi_dim(self) -> int:
        """Width H of ψ."""
        return self.llava.config.text_config.hidden_size

    def build_inputs(
        self, visual_per_frame: torch.Tensor, atoms: Sequence[Sequence[SoundAtom]]
    ) -> MLLMInputs:
        """(B, T, 512) frame features and B lists of atoms (strongest first) -> left-padded prompts."""
        visual_dim, atom_dim = self.projector.config.visual_dim, self.projector.config.atom_dim
        if visual_per_frame.dim() != 3 or visual_per_frame.shape[-1] != visual_dim:
            raise MLLMInputError(
                f"visual_per_frame has shape {tuple(visual_per_frame.shape)}; expected (B, T, {visual_dim}) "
                "GeoCLIP features (VisualFeatures.per_frame)"
            )
        if len(atoms) != visual_per_frame.shape[0]:
            raise MLLMInputError(
                f"{len(atoms)} atom lists for {visual_per_frame.shape[0]} clips; give one list per clip"
            )
        frames = visual_per_frame[:, _even_indices(visual_per_frame.shape[1], self.config.num_frames)]
        atoms = [list(clip_atoms)[: self.config.max_atoms] for clip_atoms in atoms]
        prompts = [
            self.tokenizer(render_prompt(frames.shape[1], [(atom.name, atom.strength) for atom in row]))
            for row in atoms
        ]
        token_ids, attention_mask = _left_pad(
            [prompt.input_ids for prompt in prompts], self.tokenizer.pad_token_id, self.llava.device
        )
        embeds = self.llava.get_input_embeddings()(token_ids)
        soft_tokens = [(self._frame_id, self.projector.frame, frames.flatten(0, 1))]
        atom_vectors = [torch.as_tensor(atom.vector) for row in atoms for atom in row]
        if any(vector.shape != (atom_dim,) for vector in atom_vectors):
            shapes = sorted({tuple(vector.shape) for vector in atom_vectors} - {(atom_dim,)})
            raise MLLMInputError(
                f"atom vectors of shape {shapes[0]}; expected ({atom_dim},) (SoundAtom.vector)"
            )
        if atom_vectors:
            soft_tokens.append((self._atom_id, self.projector.atom, torch.stack(atom_vectors)))
        for token_id, mlp, features in soft_tokens:
            placeholders = token_ids == token_id
            if int(placeholders.sum()) != features.shape[0]:
                raise MLLMInputError(
                    f"the tokenizer split the prompt's {self.tokenizer.convert_ids_to_tokens(token_id)} "
                    "placeholders; load the tokenizer through GeoMLLM.from_pretrained, which adds them"
                )
            projected = mlp(features.to(device=embeds.device, dtype=embeds.dtype))
            embeds = embeds.masked_scatter(placeholders[..., None], projected)
        return MLLMInputs(embeds, attention_mask, token_ids)

    @torch.no_grad()
    def generate(
        self, inputs: MLLMInputs, num_return_sequences: int = 1, seed: int | None = None
    ) -> Generation:
        """Sample `num_return_sequences` completions per prompt; `seed` makes the draw reproducible."""
        config = self.config
        # top_k=0: transformers' default top_k=50 would otherwise truncate the distribution silently.
        sampling = (
            {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
            if config.temperature > 0
            else {"do_sample": False}
        )
        with _seeded(seed, self.llava.device):
            output = self.llava.generate(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                max_new_tokens=config.max_new_tokens,
                num_return_sequences=num_return_sequences,
                eos_token_id=self._stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
        token_ids = output.sequences
        mask = _completion_mask(token_ids, self._stop_ids)
        logprobs = self._token_logprobs(torch.stack(output.logits, dim=1), token_ids, mask)
        texts = self.tokenizer.batch_decode(
            token_ids.masked_fill(mask == 0, self.tokenizer.pad_token_id), skip_special_tokens=True
        )
        return Generation(texts, token_ids, mask, logprobs)

    def sequence_logprobs(
        self, inputs: MLLMInputs, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, T') log-probabilities of the completions' tokens given their prompts (N = B·G), 0 where
        the mask is 0; differentiable, for the GRPO learner and reference."""
        hidden = self._hidden_states(inputs, completion_ids, completion_mask)
        # The state at position i predicts token i + 1: the prompt's last state predicts the first token.
        prompt_length = inputs.attention_mask.shape[1]
        logits = self.llava.lm_head(hidden[:, prompt_length - 1 : -1])
        return self._token_logprobs(
            logits, completion_ids.to(logits.device), completion_mask.to(logits.device)
        )

    def psi(
        self, inputs: MLLMInputs, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, H) ψ of each completion (see the module doc); differentiable, so wrap rollouts in no_grad."""
        completion_mask = completion_mask.to(self.llava.device)
        if not completion_mask.any(dim=1).all():
            raise MLLMInputError("a completion has no tokens (its mask is all 0); ψ needs at least one")
        prompt_length = inputs.attention_mask.shape[1]
        hidden = self._hidden_states(inputs, completion_ids, completion_mask)[:, prompt_length:]
        if self.config.psi_pooling == "mean":
            weights = completion_mask[..., None].to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1)
        positions = torch.arange(1, completion_mask.shape[1] + 1, device=completion_mask.device)
        last_index = (completion_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """The weights a learner sends to rollout actors (projector, language model, lm_head), detached,
        by parameter name; LLaVA's bypassed vision tower and projector are left out."""
        return {name: parameter.detach() for name, parameter in self._synced_parameters().items()}

    @torch.no_grad()
    def load_state_dict_for_sync(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy weights from another GeoMLLM's `state_dict_for_sync` into this one, in place."""
        parameters = self._synced_parameters()
        missing, unexpected = (
            sorted(parameters.keys() - state_dict.keys()),
            sorted(state_dict.keys() - parameters.keys()),
        )
        wrong_shape = [
            name
            for name in parameters.keys() & state_dict.keys()
            if state_dict[name].shape != parameters[name].shape
        ]
        if missing or unexpected or wrong_shape:
            raise MLLMInputError(
                f"synced weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"wrong shape {sorted(wrong_shape)[:3]}); send state_dict_for_sync() of a GeoMLLM loaded "
                "from the same checkpoint"
            )
        for name, parameter in parameters.items():
            parameter.copy_(state_dict[name])

    def _synced_parameters(self) -> dict[str, nn.Parameter]:
        return {
            name: parameter
            for name, parameter in self.named_parameters()
            if not name.startswith(_BYPASSED_PREFIXES)
        }

    def _hidden_states(
        self, inputs: MLLMInputs, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, L + T', H) final hidden states over prompt + completion, with generate's position ids."""
        num_prompts = inputs.inputs_embeds.shape[0]
        if completion_ids.dim() != 2 or completion_ids.shape != completion_mask.shape:
            raise MLLMInputError(
                f"completion_ids {tuple(completion_ids.shape)} and completion_mask "
                f"{tuple(completion_mask.shape)} must both be (N, T')"
            )
        if completion_ids.shape[0] % num_prompts:
            raise MLLMInputError(
                f"{completion_ids.shape[0]} completions for {num_prompts} prompts; expected G per prompt, "
                "prompt-major, as generate returns them"
            )
        device = self.llava.device
        repeats = completion_ids.shape[0] // num_prompts
        completion_ids = completion_ids.to(device)
        embeds = torch.cat(
            [
                inputs.inputs_embeds.repeat_interleave(repeats, dim=0),
                self.llava.get_input_embeddings()(completion_ids),
            ],
            dim=1,
        )
        mask = torch.cat(
            [inputs.attention_mask.repeat_interleave(repeats, dim=0), completion_mask.to(device, torch.long)],
            dim=1,
        )
        # transformers' generate numbers positions by counting unpadded tokens; do the same.
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        output = self.llava.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids)
        return output.last_hidden_state

    def _token_logprobs(
        self, logits: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(N, T', V) logits, (N, T') ids -> (N, T') float32 log-probabilities of softmax(logits / T)."""
        logits = logits.float() / (self.config.temperature or 1.0)
        token_logits = logits.gather(-1, token_ids[..., None]).squeeze(-1)
        return (token_logits - logits.logsumexp(-1)).masked_fill(mask == 0, 0.0)


def _even_indices(num_frames: int, max_frames: int) -> torch.Tensor:
    """Indices of at most `max_frames` of `num_frames` frames, evenly spread, first and last included."""
    if num_frames < 1:
        raise MLLMInputError("visual_per_frame has no frames; a clip needs at least one")
    if num_frames <= max_frames:
        return torch.arange(num_frames)
    return torch.linspace(0, num_frames - 1, max_frames).round().long()


def _left_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (B, L) ids padded on the left with `pad_id`, and the (B, L) long mask."""
    length = max(map(len, sequences))
    token_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        token_ids[row, length - len(sequence) :] = torch.tensor(sequence)
        mask[row, length - len(sequence) :] = 1
    return token_ids.to(device), mask.to(device)


def _completion_mask(token_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(N, T') -> (N, T') long: 1 up to and including each row's first stop token."""
    is_stop = torch.isin(token_ids, torch.tensor(stop_ids, device=token_ids.device)).long()
    stopped_before = is_stop.cumsum(1) - is_stop
    return (stopped_before == 0).long()


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's generators seeded (and restored afterwards); no-op for seed=None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
