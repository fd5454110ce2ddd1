"""hf_gradinit.core: which tensors get a scale (selection), the split into S and S~
(batches), and the model as a function of its scales (problem): its gradients against
finite differences and independent copies of the model."""

from __future__ import annotations

import pytest
import torch
from testing_utils import (
    float64_model,
    model_at,
    perturbed_alpha,
    seq2seq_batch,
    seq2seq_examples,
    tiny_bart,
    tiny_fsmt,
    tiny_marian,
)
from transformers import MarianMTModel, T5Config, T5ForConditionalGeneration, default_data_collator

from hf_gradinit import GradInitConfig, GradInitError, compute_gradinit_scales
from hf_gradinit.core.batches import UnsplittableBatch, batch_size, split_batch
from hf_gradinit.core.loop import inner_step, norm_direction
from hf_gradinit.core.problem import ScaledModel
from hf_gradinit.core.selection import find_scaled_tensors, find_tied_input_output

SHARED = [
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
]


def tiny_t5(tie: bool):
    config = T5Config(
        vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=tie,
    )  # fmt: skip
    return T5ForConditionalGeneration(config)


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------


def test_zero_and_frozen_tensors_get_no_scale():
    model = tiny_marian()
    names = {s.name for s in find_scaled_tensors(model)}
    assert "model.encoder.embed_positions.weight" not in names  # frozen sinusoidal
    assert "model.encoder.layers.0.fc1.bias" not in names  # zero at init
    assert "model.encoder.layers.0.fc1.weight" in names
    assert "model.encoder.layers.0.self_attn_layer_norm.weight" in names


def test_tensors_the_model_does_not_save_get_no_scale(tmp_path):
    from transformers import MarianMTModel

    tiny_marian().save_pretrained(tmp_path)
    reloaded = MarianMTModel.from_pretrained(tmp_path)
    positions = "model.encoder.embed_positions.weight"
    assert dict(reloaded.named_parameters())[positions].requires_grad  # trainable after reload
    names = {s.name for s in find_scaled_tensors(reloaded)}
    assert positions not in names
    assert "model.encoder.layers.0.fc1.weight" in names


def test_fixed_embeddings_leave_out_every_table_and_a_tied_tensor_is_listed_once():
    model = tiny_bart()
    every = {s.name: s for s in find_scaled_tensors(model)}
    assert every["model.shared.weight"].kind == "weight"
    assert set(every["model.shared.weight"].aliases) == set(SHARED[1:])
    assert not set(SHARED[1:]) & set(every)  # the aliases are not listed on their own
    assert every["model.encoder.layers.0.self_attn_layer_norm.weight"].kind == "gain"
    fixed = {s.name for s in find_scaled_tensors(model, fixed_embeddings=True)}
    tables = {
        n
        for n, _ in model.named_parameters()
        if isinstance(model.get_submodule(n.rpartition(".")[0]), torch.nn.Embedding)
    }
    assert {"model.shared.weight", "model.encoder.embed_positions.weight"} <= tables
    assert fixed == set(every) - tables


def test_found_where_one_matrix_is_encoder_input_decoder_input_and_output():
    assert find_tied_input_output(tiny_marian()) == [SHARED]
    assert find_tied_input_output(tiny_bart()) == [SHARED]
    # FSMT with tie_word_embeddings=True too: transformers 5.x ties its encoder embedding
    # to the decoder's as well (FSMTModel._tied_weights_keys), not only decoder in/out
    (fsmt,) = find_tied_input_output(tiny_fsmt())
    assert "model.encoder.embed_tokens.weight" in fsmt
    (t5,) = find_tied_input_output(tiny_t5(tie=True))
    assert set(t5) == {n.removeprefix("model.") for n in SHARED}


def test_not_found_where_only_the_decoder_input_and_output_are_tied_or_nothing_is():
    reference = tiny_marian(share_encoder_decoder_embeddings=False, tie_word_embeddings=True)
    assert find_tied_input_output(reference) == []
    untied = tiny_marian(share_encoder_decoder_embeddings=False, tie_word_embeddings=False)
    assert find_tied_input_output(untied) == []


# --------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------


def test_split_batch_overlap():
    batch = {"x": torch.arange(9), "meta": "keep"}
    s, t = split_batch(batch, 0.5, torch.Generator().manual_seed(0))
    assert len(s["x"]) == len(t["x"]) == 6
    assert len(set(s["x"].tolist()) & set(t["x"].tolist())) == 3
    assert set(s["x"].tolist()) | set(t["x"].tolist()) == set(range(9))
    assert s["meta"] == "keep"
    s, t = split_batch(batch, 0.0, torch.Generator().manual_seed(0))
    assert not set(s["x"].tolist()) & set(t["x"].tolist())
    s, t = split_batch(batch, 1.0, torch.Generator().manual_seed(0))
    assert sorted(s["x"].tolist()) == sorted(t["x"].tolist()) == list(range(9))


@pytest.mark.parametrize("overlap", [0.5, 0.0, 1.0])
def test_a_packed_batch_is_split_over_its_sequences_as_the_collator_would_pack_them(overlap):
    """A padding-free batch is one row holding every sequence. Each half must be exactly
    what transformers' DataCollatorWithFlattening makes of the sequences it holds."""
    from transformers import DataCollatorWithFlattening

    collate = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)
    g = torch.Generator().manual_seed(0)
    examples = [
        {"input_ids": torch.randint(3, 50, (n,), generator=g).tolist()} for n in (3, 5, 2, 4, 6, 3)
    ]
    batch = collate(examples)
    assert batch_size(batch) == 1 and batch["input_ids"].shape == (1, 23)
    s, t = split_batch(batch, overlap, torch.Generator().manual_seed(1))
    chosen = []
    for half in (s, t):
        starts = (half["position_ids"][0] == 0).nonzero().flatten().tolist()
        pieces = torch.tensor_split(half["input_ids"][0], starts[1:])
        picked = [
            next(i for i, e in enumerate(examples) if e["input_ids"] == p.tolist()) for p in pieces
        ]
        expected = collate([examples[i] for i in picked])
        assert half.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(torch.as_tensor(half[key]), torch.as_tensor(value)), key
        chosen.append(set(picked))
    n = {0.5: 4, 0.0: 3, 1.0: 6}[overlap]
    assert len(chosen[0]) == len(chosen[1]) == n
    assert len(chosen[0] & chosen[1]) == 2 * n - 6 and chosen[0] | chosen[1] == set(range(6))
    with pytest.raises(UnsplittableBatch):  # one packed sequence
        split_batch(collate(examples[:1]), 0.5)


def test_only_per_example_entries_are_split_and_a_batch_of_one_is_unsplittable():
    batch = {
        "input_ids": torch.arange(12).view(6, 2),
        "position_ids": torch.arange(2).view(1, 2),  # per batch: goes to both halves
        "nested": {"labels": torch.arange(6)},
    }
    assert batch_size(batch) == 6
    s, t = split_batch(batch, 0.5, torch.Generator().manual_seed(0))
    assert s["input_ids"].shape == (4, 2) and t["nested"]["labels"].shape == (4,)
    assert torch.equal(s["position_ids"], batch["position_ids"])
    assert torch.equal(s["input_ids"][:, 0] // 2, s["nested"]["labels"])  # rows stay together
    with pytest.raises(UnsplittableBatch, match="cannot be split"):
        split_batch({"input_ids": torch.zeros(1, 3)}, 0.5)
    whole, again = split_batch({"input_ids": torch.zeros(1, 3)}, 1.0)
    assert whole["input_ids"].shape == again["input_ids"].shape == (1, 3)


# --------------------------------------------------------------------------------------
# problem: gradients against finite differences
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inner,normalize", [("adam", False), ("sgd", False), ("sgd", True)], ids=str
)
def test_objective_gradient_matches_finite_differences(inner, normalize):
    model = float64_model()
    config = GradInitConfig(inner_optimizer=inner, normalize_sgd_grad=normalize, eta=0.05)
    problem = ScaledModel(model, torch.device("cpu"))
    assert {s.kind for s in problem.scaled} == {"weight", "gain", "bias"}
    alpha = perturbed_alpha(problem)
    batch_s, batch_t = seq2seq_batch(seed=0), seq2seq_batch(seed=1)
    _, grads = problem.gradient(alpha, batch_s)
    steps = inner_step(grads, config)
    _, analytic = problem.objective_grad(alpha, steps, config.eta, batch_t)

    def objective(a):  # loss on S~ after the (fixed, detached) step, divided by eta
        theta = {
            n: (a[problem.index[n]] * problem.w0[n] if n in problem.index else problem.w0[n])
            - config.eta * s
            for n, s in zip(problem.trainable, steps)
        }
        with torch.no_grad():
            return model_at(model, theta)(**batch_t).loss.item() / config.eta

    eps = 1e-6
    for i in range(len(alpha)):
        up, down = alpha.clone(), alpha.clone()
        up[i] += eps
        down[i] -= eps
        numeric = (objective(up) - objective(down)) / (2 * eps)
        assert analytic[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-6), problem.names[i]


def _norm_setup(model, norm_type):
    """A float64 model's scaled problem at perturbed scales, a batch, its gradients (with
    their graph) and the gradient norm's direction."""
    problem = ScaledModel(model, torch.device("cpu"))
    alpha = perturbed_alpha(problem).requires_grad_(True)
    batch = seq2seq_batch()
    _, grads = problem.gradient(alpha, batch, create_graph=True)
    direction = norm_direction([g.detach() for g in grads], norm_type)
    return model, problem, alpha, batch, grads, direction


@pytest.mark.parametrize("norm_type", ["l1", "l2"])
def test_gradient_norm_gradient_matches_finite_differences(norm_type):
    model, problem, alpha, batch, grads, direction = _norm_setup(float64_model(), norm_type)
    analytic = problem.norm_grad(alpha, grads, direction)

    def grad_norm(a):  # independent: plain backward through a copy of the model
        theta = problem.theta(a.detach())
        clone = model_at(model, theta)
        clone(**batch).loss.backward()
        g = [p.grad for n, p in clone.named_parameters() if n in theta]
        if norm_type == "l1":
            return sum(x.abs().sum() for x in g).item()
        return torch.sqrt(sum((x * x).sum() for x in g)).item()

    _, plain = problem.gradient(alpha, batch)
    from_gradients = problem.norm_grad_fd(alpha, direction, batch, problem.w_dot(plain))
    eps = 1e-6
    numerics = []
    for i in range(len(alpha)):
        up, down = alpha.detach().clone(), alpha.detach().clone()
        up[i] += eps
        down[i] -= eps
        numeric = (grad_norm(up) - grad_norm(down)) / (2 * eps)
        numerics.append(numeric)
        assert analytic[i].item() == pytest.approx(numeric, rel=1e-4, abs=1e-6), problem.names[i]
    # The default (finite differences of gradients) against the same numbers, as a vector.
    numerics = torch.tensor(numerics, dtype=from_gradients.dtype)
    assert ((from_gradients - numerics).norm() / numerics.norm()).item() < 1e-3


@pytest.mark.parametrize("norm_type", ["l1", "l2"])
@pytest.mark.parametrize("factory", [tiny_marian, tiny_bart], ids=["marian", "bart"])
def test_hessian_vector_products_from_gradients_match_double_backward(factory, norm_type):
    """The finite-difference norm gradient against the exact (double-backward) one, float64.

    Marian's relu makes the loss piecewise smooth, so a difference step can cross a kink
    that the exact second derivative ignores: that is the larger error there.
    """
    torch.manual_seed(0)
    _, problem, alpha, batch, grads, direction = _norm_setup(float64_model(factory), norm_type)
    exact = problem.norm_grad(alpha, grads, direction)
    _, plain = problem.gradient(alpha, batch)
    approx = problem.norm_grad_fd(alpha, direction, batch, problem.w_dot(plain))
    assert ((approx - exact).norm() / exact.norm()).item() < 1e-3


def test_a_custom_compute_loss_sees_the_swapped_tensors_and_the_model_is_only_read():
    model = float64_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def halved(m, batch):  # the hook gets the model itself, with theta swapped in
        assert m is model
        return 0.5 * m(**batch).loss

    problem = ScaledModel(model, torch.device("cpu"), compute_loss=halved)
    plain = ScaledModel(model, torch.device("cpu"))
    alpha = perturbed_alpha(problem)
    batch = seq2seq_batch()
    loss, grads = problem.gradient(alpha, batch)
    with torch.no_grad():
        expected = model_at(model, problem.theta(alpha))(**batch).loss
    assert loss.item() == pytest.approx(0.5 * expected.item(), rel=1e-12)
    plain_loss, plain_grads = plain.gradient(alpha, batch)
    assert plain_loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for g, h in zip(grads, plain_grads):
        torch.testing.assert_close(g, 0.5 * h)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_norm_branch_needs_no_double_backward_by_default(monkeypatch):
    """The finite-difference norm gradient keeps the model's own attention kernels."""
    import hf_gradinit.core.problem as problem_module

    def forbidden():
        raise AssertionError("the math attention kernel was switched on")

    monkeypatch.setattr(problem_module, "math_attention", forbidden)
    model = tiny_marian()  # sdpa attention
    config = GradInitConfig(iterations=3, gamma=1e-3, gamma_unit="absolute", probe_steps=0)
    result = compute_gradinit_scales(model, [seq2seq_batch(9)], config, show_progress=False)
    assert [h["branch"] for h in result.history] == ["constraint"] * 3
    with pytest.raises(Exception, match="math attention"):
        compute_gradinit_scales(
            model,
            [seq2seq_batch(9)],
            GradInitConfig(**{**config.to_dict(), "hvp": "double_backward"}),
            show_progress=False,
        )


# ---- The model's memory settings and batches that carry more than per-example tensors ------


def _saved_bytes_per_forward(model, run) -> int:
    """Largest number of bytes autograd saved for backward during one forward of
    ``model`` (tensors saved inside checkpointed regions are not kept, so not counted)."""
    peaks, current = [], [0]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def start(*_):
        current[0] = 0
        peaks.append(0)

    def pack(t):
        if t.untyped_storage().data_ptr() in weights:  # the weights themselves: no new memory
            return t
        current[0] += t.numel() * t.element_size()
        peaks[-1] = max(peaks[-1], current[0])
        return t

    handle = model.register_forward_pre_hook(start)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        handle.remove()
    return max(peaks)


def test_gradient_checkpointing_is_honoured_during_gradinit():
    torch.manual_seed(0)
    model = tiny_marian(
        d_model=32, encoder_layers=4, decoder_layers=4, encoder_ffn_dim=128, decoder_ffn_dim=128
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = default_data_collator(seq2seq_examples(12, src_len=24, tgt_len=20))

    def training_step():
        model.train()
        model(**batch).loss.backward()
        model.zero_grad()

    step = _saved_bytes_per_forward(model, training_step)
    config = GradInitConfig(iterations=1, overlap=1.0, probe_steps=0)
    gradinit = _saved_bytes_per_forward(
        model, lambda: compute_gradinit_scales(model, [batch], config, show_progress=False)
    )
    assert gradinit <= 1.5 * step, (gradinit, step)


def test_an_empty_batch_says_what_happened():
    with pytest.raises(GradInitError, match="empty"):
        compute_gradinit_scales(
            tiny_marian(), [{}], GradInitConfig(iterations=1), show_progress=False
        )


def test_batches_with_per_batch_tensors_and_nested_values(tmp_path):
    def collate(features):
        batch = default_data_collator(features)
        length = batch["input_ids"].shape[1]
        # a per-batch tensor first, a scalar and a non-tensor value
        return {
            "note": "extra",
            "temperature": torch.tensor(1.0),
            **batch,
            "position_hint": torch.arange(length)[None],
        }

    class Model(MarianMTModel):
        def forward(self, note=None, temperature=None, position_hint=None, **kwargs):
            assert position_hint.shape[0] == 1 and temperature.dim() == 0
            return super().forward(**kwargs)

    torch.manual_seed(0)
    model = Model(tiny_marian().config)
    config = GradInitConfig(iterations=2, probe_steps=0)
    loader = torch.utils.data.DataLoader(seq2seq_examples(12), batch_size=6, collate_fn=collate)
    result = compute_gradinit_scales(model, loader, config, show_progress=False)
    assert len(result.history) == 2
