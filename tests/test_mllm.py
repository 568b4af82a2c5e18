"""GeoMLLM on the tiny LLaVA: tokenizer, prompts, soft tokens, sampling, log-probabilities, ψ, checkpoints."""

import dataclasses
import socket

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from avgeo.config import ConfigError, load_config
from avgeo.data.audioset import audioset_classes
from avgeo.geo.gazetteer import Gazetteer
from avgeo.perception.checkpoints import CheckpointError
from avgeo.perception.icsae import ICSAE
from avgeo.reasoning.answer import format_answer, parse_response
from avgeo.reasoning.checkpoints import tiny_llava
from avgeo.reasoning.mllm import PROJECTOR_DIR, GeoMLLM, MLLMConfig, MLLMInputError
from avgeo.reasoning.prompt import ATOM_TOKEN, FRAME_TOKEN, SoundAtom, render_prompt, sound_atoms
from avgeo.reasoning.tokenizer import (
    ANSWER_CLOSE,
    PLACEHOLDER_TOKENS,
    RESPONSE_TAGS,
    add_geomllm_tokens,
    build_tokenizer,
)

FEATURE_DIM = 512
MAX_NEW_TOKENS = 32


@pytest.fixture(autouse=True, scope="module")
def avgeo_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVGEO_HOME", str(tmp_path_factory.mktemp("avgeo_home")))
        yield


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return GeoMLLM.from_pretrained(
        "tiny", MLLMConfig(max_new_tokens=MAX_NEW_TOKENS, num_frames=4, max_atoms=3)
    )


@pytest.fixture(scope="module")
def clips():
    """Two clips of 6 frames with 3 and 1 atoms: prompts of different lengths, so one is left-padded."""
    generator = torch.Generator().manual_seed(0)
    visual = torch.randn(2, 6, FEATURE_DIM, generator=generator)
    names = [("Speech", 0.82), ("Bird", 0.41), ("Church bell", 0.2)], [("Rain", 1.37)]
    atoms = [
        [SoundAtom(name, strength, torch.randn(FEATURE_DIM, generator=generator)) for name, strength in row]
        for row in names
    ]
    return visual, atoms


@pytest.fixture(scope="module")
def closing_model(model, clips):
    """The tiny model with `</answer>`'s output row along the common direction of its final hidden
    states, so sampled completions end at various lengths."""
    closing = GeoMLLM.from_pretrained("tiny", dataclasses.replace(model.config, temperature=0.7, top_p=0.9))
    inputs = closing.build_inputs(*clips)
    with torch.no_grad():
        hidden = closing.llava.model(inputs_embeds=inputs.inputs_embeds).last_hidden_state
        direction = hidden.mean((0, 1))
        close_id = closing.tokenizer.convert_tokens_to_ids(ANSWER_CLOSE)
        closing.llava.lm_head.weight[close_id] = 0.5 * direction / direction.norm()
    return closing


@pytest.fixture(scope="module")
def rollout(closing_model, clips):
    inputs = closing_model.build_inputs(*clips)
    return inputs, closing_model.generate(inputs, num_return_sequences=4, seed=0)


# ---- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_build_is_deterministic(model):
    assert build_tokenizer().backend_tokenizer.to_str() == model.tokenizer.backend_tokenizer.to_str()


def test_tokenizer_writes_numbers_digit_by_digit(model):
    tokens = model.tokenizer.tokenize("-33.8688, 151.2093 (0.82) 2026")
    digit_tokens = [token for token in tokens if any(char.isdigit() for char in token)]
    assert "".join(digit_tokens) == "33868815120930822026"
    assert all(len(token) == 1 for token in digit_tokens)


def test_tokenizer_round_trips_every_class_and_place_name(model):
    gazetteer = Gazetteer.load(min_city_population=1_000_000)
    places = [*gazetteer.continents, *gazetteer.countries, *gazetteer.cities()]
    names = [c.name for c in audioset_classes()] + [place.name for place in places] + ["Zürich, Ōsaka ☔"]
    for name in names:
        ids = model.tokenizer(name, add_special_tokens=False).input_ids
        assert model.tokenizer.unk_token_id not in ids
        assert model.tokenizer.decode(ids) == name


def test_response_tags_and_placeholders_are_single_tokens_and_responses_round_trip(model):
    tokenizer = model.tokenizer
    response = format_answer("Bells and Speech: Bern, Switzerland.", (46.948, 7.4474))
    ids = tokenizer(response + FRAME_TOKEN + ATOM_TOKEN).input_ids
    for token in (*RESPONSE_TAGS, *PLACEHOLDER_TOKENS[1:]):
        assert ids.count(tokenizer.convert_tokens_to_ids(token)) == 1, token
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == response
    assert parse_response(decoded).latlon_deg == (46.948, 7.4474)
    assert add_geomllm_tokens(tokenizer) == 0


def test_tokenizer_reloads_from_its_directory(model, tmp_path):
    model.tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = render_prompt(2, [("Speech", 0.5)]) + format_answer("x", (1.5, -2.25))
    assert reloaded(text).input_ids == model.tokenizer(text).input_ids
    assert len(reloaded) == len(model.tokenizer)


# ---- prompts and soft tokens -----------------------------------------------------------------------


def test_render_prompt_lists_atoms_in_order_with_one_placeholder_each():
    prompt = render_prompt(3, [("Speech", 0.816), ("Bird", 0.4)])
    assert prompt.count(FRAME_TOKEN) == 3 and prompt.count(ATOM_TOKEN) == 2
    assert "Speech (0.82) <atom>; Bird (0.40) <atom>" in prompt
    assert "Sounds, strongest first: none\n" in render_prompt(1, [])
    assert prompt.startswith("USER:") and prompt.endswith("ASSISTANT:")


def test_sound_atoms_carry_the_scaled_kernels_of_a_decomposition():
    torch.manual_seed(3)
    icsae = ICSAE()
    decomposition = icsae.decompose(torch.randn(2, FEATURE_DIM), num_steps=4)
    atoms = sound_atoms(icsae, decomposition)
    for row, row_atoms in enumerate(atoms):
        assert [atom.name for atom in row_atoms] == [a.class_name for a in icsae.atoms(decomposition)[row]]
        for step, atom in enumerate(row_atoms):
            kernel = icsae.dictionary[:, decomposition.kernels[row, step]]
            torch.testing.assert_close(atom.vector, atom.strength * kernel)


def test_build_inputs_puts_projected_features_where_the_placeholders_were(model, clips):
    visual, atoms = clips
    inputs = model.build_inputs(visual, atoms)
    ids, mask = inputs.prompt_token_ids, inputs.attention_mask
    assert mask[0].all() and not mask[1].all(), "the clip with fewer atoms is padded"
    assert (mask.diff(dim=1) >= 0).all(), "padding is on the left"
    assert (ids[mask == 0] == model.tokenizer.pad_token_id).all()
    with torch.no_grad():
        token_rows = model.llava.get_input_embeddings()(ids)
        # 6 frames, 4 allowed: evenly spread, first and last kept.
        frames = model.projector.frame(visual[:, [0, 2, 3, 5]])
        atom_rows = model.projector.atom(torch.stack([atom.vector for row in atoms for atom in row]))
    frame_id, atom_id = model.tokenizer.convert_tokens_to_ids([FRAME_TOKEN, ATOM_TOKEN])
    frame_slots, atom_slots = ids == frame_id, ids == atom_id
    torch.testing.assert_close(inputs.inputs_embeds[frame_slots], frames.flatten(0, 1))
    torch.testing.assert_close(inputs.inputs_embeds[atom_slots], atom_rows)
    text_slots = ~(frame_slots | atom_slots)
    assert torch.equal(inputs.inputs_embeds[text_slots], token_rows[text_slots])
    assert atom_slots.sum(1).tolist() == [3, 1]
    assert model.tokenizer.decode(ids[1][mask[1] == 1], skip_special_tokens=True).count("Rain (1.37)") == 1


def test_build_inputs_keeps_the_strongest_atoms_and_passes_gradients_to_the_projector(model, clips):
    visual, atoms = clips
    many = [atoms[0] + atoms[1]]  # 4 atoms, 3 allowed: the first three stay
    inputs = model.build_inputs(visual[:1], many)
    assert "Rain" not in model.tokenizer.decode(inputs.prompt_token_ids[0])
    inputs.inputs_embeds.sum().backward()
    assert model.projector.frame[0].weight.grad.abs().sum() > 0
    assert model.projector.atom[0].weight.grad.abs().sum() > 0
    model.projector.zero_grad(set_to_none=True)


def test_build_inputs_rejects_wrong_shapes(model, clips):
    visual, atoms = clips
    with pytest.raises(MLLMInputError, match=r"expected \(B, T, 512\)"):
        model.build_inputs(visual[..., :100], atoms)
    with pytest.raises(MLLMInputError, match="one list per clip"):
        model.build_inputs(visual, atoms[:1])
    with pytest.raises(MLLMInputError, match=r"expected \(512,\)"):
        model.build_inputs(visual[:1], [[SoundAtom("Speech", 1.0, torch.zeros(3))]])


# ---- generation, log-probabilities, ψ --------------------------------------------------------------


def test_generate_is_reproducible_for_a_seed_and_leaves_the_global_stream_alone(model, clips):
    inputs = model.build_inputs(*clips)
    torch.manual_seed(123)
    first = model.generate(inputs, num_return_sequences=2, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    again = model.generate(inputs, num_return_sequences=2, seed=7)
    assert torch.equal(torch.rand(3), after)
    other = model.generate(inputs, num_return_sequences=2, seed=8)
    assert torch.equal(first.token_ids, again.token_ids) and first.texts == again.texts
    assert not torch.equal(first.token_ids, other.token_ids)
    assert len(first.texts) == 4 and all(isinstance(text, str) and text for text in first.texts)
    assert first.logprobs.dtype == torch.float32 and (first.logprobs <= 0).all()


def test_completions_end_at_their_first_stop_token(closing_model, rollout):
    _, generation = rollout
    tokenizer = closing_model.tokenizer
    pad_id, stop_ids = (
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids([tokenizer.eos_token, ANSWER_CLOSE]),
    )
    lengths = generation.mask.sum(1)
    assert (lengths < MAX_NEW_TOKENS).any() and (lengths > 1).any(), "the seed must give varied lengths"
    for ids, mask, length, text, logprobs in zip(
        generation.token_ids, generation.mask, lengths, generation.texts, generation.logprobs, strict=True
    ):
        assert mask[:length].all() and not mask[length:].any()
        assert (ids[length:] == pad_id).all() and (logprobs[length:] == 0).all()
        assert not any(int(token) in stop_ids for token in ids[: length - 1])
        if length < generation.token_ids.shape[1]:
            assert int(ids[length - 1]) in stop_ids
        if int(ids[length - 1]) == stop_ids[1]:
            assert text.endswith(ANSWER_CLOSE)


def test_sequence_logprobs_reproduce_generates_logprobs(closing_model, rollout):
    inputs, generation = rollout
    logprobs = closing_model.sequence_logprobs(inputs, generation.token_ids, generation.mask)
    assert logprobs.shape == generation.logprobs.shape
    torch.testing.assert_close(logprobs, generation.logprobs, atol=2e-5, rtol=0)
    # Row 0 from LLaVA's own forward on its unpadded prompt: logits at temperature 0.7, shifted by one.
    length = int(generation.mask[0].sum())
    embeds = torch.cat(
        [
            inputs.inputs_embeds[:1],
            closing_model.llava.get_input_embeddings()(generation.token_ids[:1, :length]),
        ],
        1,
    )
    with torch.no_grad():
        logits = closing_model.llava(inputs_embeds=embeds).logits[0, -length - 1 : -1] / 0.7
    expected = logits.log_softmax(-1).gather(-1, generation.token_ids[0, :length, None]).squeeze(-1)
    torch.testing.assert_close(logprobs[0, :length].detach(), expected, atol=2e-5, rtol=0)
    logprobs.sum().backward()  # the learner's loss reaches the weights
    assert closing_model.llava.lm_head.weight.grad.abs().sum() > 0
    closing_model.zero_grad(set_to_none=True)


def test_psi_is_the_state_at_the_last_completion_token(closing_model, rollout):
    inputs, generation = rollout
    ids, mask = generation.token_ids, generation.mask
    with torch.no_grad():
        psi = closing_model.psi(inputs, ids, mask)
        assert psi.shape == (ids.shape[0], closing_model.psi_dim)
        assert torch.equal(psi, closing_model.psi(inputs, ids, mask))
        # Padding after the end changes nothing; cutting a completion gives the state at the cut.
        padded = torch.cat([ids, ids[:, :3]], 1), torch.cat([mask, torch.zeros_like(mask[:, :3])], 1)
        torch.testing.assert_close(closing_model.psi(inputs, *padded), psi, atol=1e-5, rtol=0)
        cut = mask.clone()
        cut[:, 1:] = 0
        at_first = closing_model.psi(inputs, ids[:, :1], mask[:, :1])
        torch.testing.assert_close(closing_model.psi(inputs, ids, cut), at_first, atol=1e-5, rtol=0)
        mean_model = GeoMLLM(
            closing_model.llava,
            closing_model.tokenizer,
            closing_model.projector,
            dataclasses.replace(closing_model.config, psi_pooling="mean"),
        )
        torch.testing.assert_close(mean_model.psi(inputs, ids, cut), at_first, atol=1e-5, rtol=0)
        assert not torch.allclose(mean_model.psi(inputs, ids, mask), psi)
        with pytest.raises(MLLMInputError, match="no tokens"):
            closing_model.psi(inputs, ids, torch.zeros_like(mask))


def test_a_left_padded_batch_scores_each_prompt_as_alone(closing_model, clips, rollout):
    inputs, generation = rollout
    visual, atoms = clips
    with torch.no_grad():
        batched_logprobs = closing_model.sequence_logprobs(inputs, generation.token_ids, generation.mask)
        batched_psi = closing_model.psi(inputs, generation.token_ids, generation.mask)
        for clip in range(2):
            alone = closing_model.build_inputs(visual[clip : clip + 1], atoms[clip : clip + 1])
            rows = slice(4 * clip, 4 * clip + 4)
            ids, mask = generation.token_ids[rows], generation.mask[rows]
            logprobs = closing_model.sequence_logprobs(alone, ids, mask)
            torch.testing.assert_close(logprobs, batched_logprobs[rows], atol=2e-5, rtol=0)
            torch.testing.assert_close(
                closing_model.psi(alone, ids, mask), batched_psi[rows], atol=2e-5, rtol=0
            )


def test_greedy_decoding_of_a_batch_matches_each_prompt_alone(model, clips):
    greedy = GeoMLLM(
        model.llava, model.tokenizer, model.projector, dataclasses.replace(model.config, temperature=0)
    )
    visual, atoms = clips
    batched = greedy.generate(greedy.build_inputs(visual, atoms))
    for clip in range(2):
        alone = greedy.generate(greedy.build_inputs(visual[clip : clip + 1], atoms[clip : clip + 1]))
        length = int(alone.mask.sum())
        assert torch.equal(alone.token_ids[0, :length], batched.token_ids[clip, :length])
        assert alone.texts[0] == batched.texts[clip]


def test_completions_must_come_g_per_prompt(model, clips):
    inputs = model.build_inputs(*clips)
    ids = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(MLLMInputError, match="3 completions for 2 prompts"):
        model.sequence_logprobs(inputs, ids, torch.ones_like(ids))


# ---- checkpoints and weight sync ---------------------------------------------------------------------


def _perturbed(model: GeoMLLM, seed: int) -> GeoMLLM:
    """The tiny model with every synced weight moved by seeded noise."""
    other = GeoMLLM.from_pretrained("tiny", model.config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.state_dict_for_sync().values():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return other


def _scores(model: GeoMLLM, clips, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        inputs = model.build_inputs(*clips)
        mask = torch.ones_like(ids)
        return model.sequence_logprobs(inputs, ids, mask), model.psi(inputs, ids, mask)


def test_save_and_reload_give_identical_outputs(model, clips, tmp_path):
    trained = _perturbed(model, seed=1)
    ids = torch.randint(10, len(model.tokenizer), (4, 6), generator=torch.Generator().manual_seed(2))
    trained.save_pretrained(tmp_path)
    assert (tmp_path / PROJECTOR_DIR / "model.safetensors").is_file()
    reloaded = GeoMLLM.from_pretrained(tmp_path, model.config)
    for got, expected in zip(_scores(reloaded, clips, ids), _scores(trained, clips, ids), strict=True):
        assert torch.equal(got, expected)
    assert not torch.equal(_scores(model, clips, ids)[1], _scores(trained, clips, ids)[1])


def test_tiny_is_rebuilt_identically_from_its_seed(model, tmp_path, monkeypatch):
    monkeypatch.setenv("AVGEO_HOME", str(tmp_path))
    rebuilt = GeoMLLM.from_pretrained("tiny", model.config)
    expected = model.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in rebuilt.state_dict().items())


def test_weight_sync_copies_the_trained_weights(model, clips):
    learner, rollout_model = _perturbed(model, seed=3), GeoMLLM.from_pretrained("tiny", model.config)
    weights = learner.state_dict_for_sync()
    assert any(name.startswith("projector.") for name in weights)
    assert "llava.lm_head.weight" in weights
    assert not any("vision_tower" in name or "multi_modal_projector" in name for name in weights)
    rollout_model.load_state_dict_for_sync({name: value.clone() for name, value in weights.items()})
    ids = torch.randint(10, len(model.tokenizer), (2, 5), generator=torch.Generator().manual_seed(4))
    for got, expected in zip(_scores(rollout_model, clips, ids), _scores(learner, clips, ids), strict=True):
        assert torch.equal(got, expected)
    del weights["llava.lm_head.weight"]
    with pytest.raises(MLLMInputError, match=r"missing \['llava.lm_head.weight'\]"):
        rollout_model.load_state_dict_for_sync(weights)


def test_a_plain_llava_checkpoint_gets_the_tokens_and_a_seeded_projector(tmp_path, clips):
    """A checkpoint laid out as llava-hf's, whose tokenizer lacks avgeo's tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["USER: where was this recorded? ASSISTANT: somewhere"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(5)
    tiny_llava(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded = GeoMLLM.from_pretrained(tmp_path, MLLMConfig(max_new_tokens=8))
    again = GeoMLLM.from_pretrained(tmp_path, MLLMConfig(max_new_tokens=8))
    assert len(loaded.tokenizer) == len(tokenizer) + 6  # 4 tags, <frame>, <atom>
    assert loaded.llava.get_input_embeddings().num_embeddings == len(loaded.tokenizer)
    assert loaded.llava.lm_head.weight.shape[0] == len(loaded.tokenizer)
    assert all(torch.equal(value, again.state_dict()[name]) for name, value in loaded.state_dict().items())
    generation = loaded.generate(loaded.build_inputs(*clips), seed=0)
    assert generation.token_ids.shape[0] == 2 and len(generation.texts) == 2


def test_nothing_is_fetched_while_offline(model, monkeypatch):
    connections = []

    def refuse(sock, address):
        connections.append(address)
        raise OSError("test: network disabled")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    GeoMLLM.from_pretrained("tiny", model.config)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        GeoMLLM.from_pretrained("example-org/llava-style-7b")  # any hub id: refused offline, typed
    assert connections == []


def test_config_is_validated_at_load():
    assert load_config(MLLMConfig, {"temperature": 0, "psi_pooling": "mean"}).psi_pooling == "mean"
    with pytest.raises(ConfigError, match="temperature"):
        load_config(MLLMConfig, {"temperature": -0.5})
    with pytest.raises(ConfigError, match="psi_pooling"):
        load_config(MLLMConfig, {"psi_pooling": "first"})
    with pytest.raises(ConfigError, match="unknown config key top_k"):
        load_config(MLLMConfig, {"top_k": 5})
