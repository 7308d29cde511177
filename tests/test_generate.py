"""``generate_text``: stepping the cell on the layer's weights draws the same characters as calling the model once
per character with ``torch.multinomial`` (how it was computed before the step path), for every cell family; models
the step path does not cover are called per character and draw the same too."""

from __future__ import annotations

import copy

import pytest
import torch
from _tolerance import assert_float32_close

import rnnlab
from rnnlab.errors import UserError
from rnnlab.kernels import common, fused
from rnnlab.models import CharLM, _cell_stepper, generate_text
from rnnlab.sequence import SequenceRun

VOCAB = list("abcdefgh ijklmn\n")


def per_character(model, prime: str, length: int, temperature: float, top_k: int, seed: int) -> str:
    """The plain loop: the whole model on each new character, ``torch.multinomial`` on the probabilities."""
    generator = torch.Generator().manual_seed(seed)
    index = {c: i for i, c in enumerate(VOCAB)}
    model.eval()
    with torch.no_grad():
        logits, state = model(torch.tensor([[index[c]] for c in prime]))
        out = []
        for _ in range(length):
            scaled = logits[-1, 0] / temperature
            if top_k:
                scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[-1], float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(scaled.float(), dim=-1), 1, generator=generator))
            out.append(VOCAB[nxt])
            logits, state = model(torch.tensor([[nxt]]), state)
    return "".join(out)


def char_model(cell: str, num_layers: int = 1, embed_size: int = 6, dtype=torch.float32, **options) -> CharLM:
    torch.manual_seed(0)
    model = CharLM(len(VOCAB), 12, cell=cell, num_layers=num_layers, embed_size=embed_size,
                   dropout=0.2 if num_layers > 1 else 0.0, layer_options=options).to(dtype)
    with torch.no_grad():  # sharper than the init's near-uniform logits, so a wrong step changes the samples
        model.head.weight.mul_(8)
    return model


def logits_along(model, chars: list[int], stepped: bool) -> torch.Tensor:
    """The next-character logits ``(len(chars), V)`` after each of ``chars`` (fed after the character 0), by the
    cell-step path or by calling the model per character."""
    model.eval()
    with torch.inference_mode():
        logits, state = model(torch.tensor([[0]]))
        step = _cell_stepper(model, state)
        assert step is not None
        out = []
        for c in chars:
            if stepped:
                out.append(step(c))
            else:
                logits, state = model(torch.tensor([[c]]), state)
                out.append(logits[-1, 0])
    return torch.stack(out)


def float64_twin(model: CharLM) -> CharLM:
    """``model`` in float64; a one-hot model (whose forward makes float32 one-hot rows) as an embedding by the
    identity matrix, which gives the same rows."""
    twin = copy.deepcopy(model)
    if twin.embed is None:
        twin.embed = torch.nn.Embedding.from_pretrained(torch.eye(twin.input_size))
    return twin.double()


STEPPED = [("lstm", 1, 6, torch.float32, {}),
           ("lstm", 2, 6, torch.float64, {"recurrent_dropout": 0.3, "weight_dropout": 0.2, "learn_init": True}),
           ("gru", 2, 0, torch.float32, {}),  # embed_size 0: one-hot input
           ("rnn_tanh", 1, 6, torch.float32, {}),
           ("rnn_relu", 1, 6, torch.float64, {}),
           ("layernorm_lstm", 1, 6, torch.float32, {}),
           ("layernorm_gru", 1, 6, torch.float32, {}),
           ("peephole_lstm", 1, 6, torch.float32, {"forget_bias": 1.0})]


@pytest.mark.parametrize("cell,num_layers,embed_size,dtype,options", STEPPED,
                         ids=[f"{c[0]}-L{c[1]}-E{c[2]}-{str(c[3])[6:]}" for c in STEPPED])
def test_the_cell_step_path_draws_what_the_per_character_model_draws(cell, num_layers, embed_size, dtype, options):
    model = char_model(cell, num_layers, embed_size, dtype, **options)
    chars = torch.randint(0, len(VOCAB), (40,), generator=torch.Generator().manual_seed(5)).tolist()
    got, ref = logits_along(model, chars, stepped=True), logits_along(model, chars, stepped=False)
    if dtype == torch.float64:
        torch.testing.assert_close(got, ref)
    else:  # the model call runs the compiled kernel, the step path torch's ops: both float32 roundings of the maths
        truth = logits_along(float64_twin(model), chars, stepped=False)
        assert_float32_close(got, ref, truth, f"{cell} logits along 40 characters", terms=12 * len(chars))
    model.train()
    for temperature, top_k, seed in ((1.0, 0, 0), (0.7, 5, 1)):
        got = generate_text(model, VOCAB, prime="ab ", length=300, temperature=temperature, top_k=top_k,
                            generator=torch.Generator().manual_seed(seed))
        assert got == per_character(model, "ab ", 300, temperature, top_k, seed)
        assert len(set(got)) > 3  # not a degenerate model that always draws the same character
    model.train()
    generate_text(model, VOCAB, length=3)
    assert model.training  # the caller's mode comes back


def test_zoneout_takes_the_model_call_and_draws_the_same():
    """In eval mode zoneout is an expectation, not the cell's plain step: the layer itself runs each character."""
    model = char_model("lstm", zoneout=0.2)
    model.eval()
    with torch.no_grad():
        _, state = model(torch.tensor([[0]]))
    assert _cell_stepper(model, state) is None
    got = generate_text(model, VOCAB, prime="a", length=100, generator=torch.Generator().manual_seed(2))
    assert got == per_character(model, "a", 100, 1.0, 0, 2)


def test_a_model_with_broken_weights_is_refused():
    model = char_model("lstm")
    with torch.no_grad():
        model.head.bias[3] = float("nan")
    with pytest.raises(UserError, match=r"generate: the model's output is not finite"):
        generate_text(model, VOCAB, length=10)
    assert generate_text(model, VOCAB, length=0) == ""


@pytest.mark.skipif(not common.compiled_available(), reason="needs the compiled kernels")
def test_an_lstm_model_samples_in_one_compiled_op_and_the_others_step(monkeypatch):
    """torch's LSTM layers on the fused backend take lstm_sample for the whole sample (its characters are the
    per-character model's: the test above); a GRU, an LSTM with projections and the reference backend do not."""
    taken: list[bool] = []
    real = fused.lstm_sampler

    def spy(*args):
        sampler = real(*args)
        taken.append(sampler is not None)
        return sampler

    monkeypatch.setattr(fused, "lstm_sampler", spy)
    generate_text(char_model("lstm"), VOCAB, length=20)
    assert taken == [True]
    reference = char_model("lstm")
    reference.rnn.backend = "reference"
    for model in (char_model("gru"), reference):
        generate_text(model, VOCAB, length=20)
    assert taken == [True]  # not asked: the dispatch declined first
    projected = rnnlab.LSTM(6, 12, proj_size=5)
    with torch.inference_mode():
        seq = SequenceRun(torch.zeros(1, 1, 6), (torch.zeros(1, 5), torch.zeros(1, 12)), projected.layer_params(0),
                          cell=projected.spec)
        assert fused.lstm_sampler([seq], torch.eye(6), torch.zeros(16, 5), None) is None
