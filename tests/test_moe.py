"""MOE-FB (``moe``): exact invertibility, exact log-determinant, linear size in genes, the paper preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellsynth.generators import GENERATORS
from cellsynth.generators.moe.model import MOEGenerator, MOEParams
from cellsynth.generators.moe.modules import (
    ActNorm,
    GroupMoments,
    MAFStep,
    MoEAttentionCoupling,
    MOEFlow,
    MultiExpertAttention,
    _largest_divisor_at_most,
)
from presets import generator_preset

SMALL = {"n_tokens": 3, "d_model": 8, "n_heads": 2, "gate_hidden": 8, "coupling_hidden": 8, "maf_hidden": 16,
         "mask_hidden": 8}
# The paper's architecture (one-token attention, input mask, nflows MAF) at test size.
PAPER = generator_preset("moe", "paper")
PAPER_SMALL = {**PAPER, "gate_hidden": 16, "coupling_hidden": 16, "maf_hidden": 16, "mask_hidden": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: thread hand-offs cost more than they save (much more on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIGS = {
    "default": MOEParams(**SMALL),
    "default-data-actnorm": MOEParams(**SMALL, actnorm_init="data", mask_mode="off", n_blocks=3),
    "zuko-maf": MOEParams(**SMALL, maf_backend="zuko", passes=3),
    "paper": MOEParams(**PAPER_SMALL),
}


def _trained_flow(params: MOEParams, features: int, context_features: int, dtype=torch.float32) -> MOEFlow:
    """A flow moved well away from its (near-identity) initialisation: noise plus a few Adam steps."""
    torch.manual_seed(0)
    flow = MOEFlow(features, context_features, params).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    x = torch.randn(64, features, dtype=dtype) * torch.linspace(0.5, 2.0, features, dtype=dtype) + 1.0
    c = None if not context_features else torch.eye(context_features, dtype=dtype)[torch.arange(64) % context_features]
    for _ in range(3):
        log_p, mask_mean = flow.log_prob(x, c)
        loss = -log_p.mean() + 0.01 * mask_mean
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow.eval()


@pytest.mark.parametrize("context_features", [0, 3])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_flow_is_exactly_invertible(config, context_features):
    features = 10
    flow = _trained_flow(CONFIGS[config], features, context_features)
    torch.manual_seed(1)
    x = torch.randn(32, features)
    c = None if not context_features else torch.eye(context_features)[torch.arange(32) % context_features]
    with torch.no_grad():
        z, logdet = flow(x, c)
        x_back = flow.inverse(z, c)
    assert (z - x).abs().max() > 0.05, "the flow should not be the identity in this test"
    assert logdet.abs().max() > 1e-3
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("config", "context_features"), [("default", 2), ("default-data-actnorm", 0), ("paper", 0)])
def test_logdet_equals_autograd_jacobian(config, context_features):
    features = 7
    flow = _trained_flow(CONFIGS[config], features, context_features, dtype=torch.float64)
    torch.manual_seed(2)
    x = torch.randn(3, features, dtype=torch.float64)
    c = None if not context_features else torch.eye(context_features, dtype=torch.float64)[torch.arange(3) % context_features]
    _, logdet = flow(x, c)
    for i in range(len(x)):
        ci = None if c is None else c[i : i + 1].expand(features, -1)
        # rows of the Jacobian in one batched backward pass (one copy of the cell per output gene)
        jac = torch.autograd.functional.jacobian(
            lambda v, ci=ci: flow(v[None], None if ci is None else ci[:1])[0][0], x[i], vectorize=True
        )
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logabsdet.item() - logdet[i].item()) < 1e-4


def test_coupling_conditioner_reads_only_the_conditioning_half():
    """Triangularity: z_a = x_a, and (s, t) do not depend on x_b, even with the feature mask."""
    torch.manual_seed(0)
    coupling = MoEAttentionCoupling(9, torch.arange(0, 9, 2), 0, n_tokens=3, d_model=8, n_heads=2,
                                    identity_init=False)
    x = torch.randn(5, 9)
    jac = torch.autograd.functional.jacobian(lambda v: coupling(v[None])[0][0], x[0])
    a, b = coupling.cond_index, coupling.trans_index
    torch.testing.assert_close(jac[a][:, a], torch.eye(len(a)))
    assert torch.all(jac[a][:, b] == 0)
    jac_bb = jac[b][:, b]
    assert torch.all(jac_bb - torch.diag(torch.diagonal(jac_bb)) == 0), "x_b must be transformed elementwise"
    assert jac[b][:, a].abs().sum() > 0, "x_a must drive the scale and shift of x_b"


def test_fused_experts_equal_torch_multihead_attention():
    torch.manual_seed(0)
    experts = MultiExpertAttention(d_model=8, n_heads=2, n_experts=3)
    with torch.no_grad():
        experts.in_bias.normal_()
        experts.out_bias.normal_()
    tokens = torch.randn(5, 4, 8)
    gate = torch.softmax(torch.randn(5, 3), dim=-1)
    expected = torch.zeros(5, 4, 8)
    for e in range(3):
        mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(experts.in_weight[e].t())
            mha.in_proj_bias.copy_(experts.in_bias[e])
            mha.out_proj.weight.copy_(experts.out_weight[e].t())
            mha.out_proj.bias.copy_(experts.out_bias[e])
        expected += gate[:, e, None, None] * mha(tokens, tokens, tokens, need_weights=False)[0]
    torch.testing.assert_close(experts(tokens, gate), expected, atol=1e-5, rtol=1e-5)


def _n_params(features: int, **params) -> int:
    return sum(p.numel() for p in MOEFlow(features, 9, MOEParams(**params)).parameters())


def test_default_size_grows_linearly_in_genes():
    small, large = _n_params(2000), _n_params(4000)
    assert large < 2.2 * small, (small, large)


def test_paper_configuration_is_quadratic_in_genes():
    # one token of width D: 4 experts x 4 D^2 attention weights dominate
    small = _n_params(200, **{**PAPER, "gate_hidden": 8, "coupling_hidden": 8, "maf_hidden": 8,
                              "mask_hidden": 8})
    large = _n_params(400, **{**PAPER, "gate_hidden": 8, "coupling_hidden": 8, "maf_hidden": 8,
                              "mask_hidden": 8})
    assert large > 3.5 * small


def test_paper_preset_matches_the_reference_code():
    model = MOEGenerator(**PAPER)
    p = model.params
    assert (p.learning_rate, p.epochs, p.batch_size) == (1e-6, 100, 128)
    assert (p.n_blocks, p.n_experts, p.n_heads, p.actnorm, p.mask_mode, p.mask_penalty) == (1, 4, 20, False, "input", 0.01)
    assert (p.mask_hidden, p.gate_hidden, p.coupling_hidden, p.maf_hidden) == (1024, 1024, 1024, 1024)
    assert not model.conditional
    flow = MOEFlow(40, 0, MOEParams(**PAPER_SMALL))
    kinds = [type(s).__name__ for s in flow.steps]
    assert kinds == ["MoEAttentionCoupling", "MAFStep"]
    coupling, maf = flow.steps
    assert all(isinstance(m, torch.nn.MultiheadAttention) and m.embed_dim == 40 for m in coupling.experts)
    assert coupling.n_heads_used == 20
    assert type(maf.net).__name__ == "MaskedAffineAutoregressiveTransform"
    # 17,789 genes is prime: the head count falls back to a divisor (irrelevant with one token)
    assert (_largest_divisor_at_most(17_789, 20), _largest_divisor_at_most(2001, 20)) == (1, 3)


def test_input_mask_is_outside_the_likelihood():
    """Paper mode: loss = NLL of the masked cell x' (mask not inverted); default: exact NLL of x."""
    torch.manual_seed(0)
    flow = MOEFlow(6, 0, MOEParams(**PAPER_SMALL)).eval()
    x = torch.randn(8, 6)
    with torch.no_grad():
        log_p, mask_mean = flow.log_prob(x)
        x_masked, m = flow.input_mask(x)
        z, logdet = flow(x_masked)
    expected = -0.5 * (z.pow(2).sum(1) + 6 * np.log(2 * np.pi)) + logdet
    torch.testing.assert_close(log_p, expected)
    torch.testing.assert_close(mask_mean, m.mean())
    assert 0 < mask_mean < 0.5

    flow = MOEFlow(6, 0, MOEParams(**SMALL)).eval()
    with torch.no_grad():
        log_p, mask_mean = flow.log_prob(x)
        z, logdet = flow(x)
    torch.testing.assert_close(log_p, -0.5 * (z.pow(2).sum(1) + 6 * np.log(2 * np.pi)) + logdet)
    assert 0 < mask_mean < 0.5


@pytest.mark.parametrize("reverse", [False, True])
def test_block_made_is_block_autoregressive(reverse):
    """Gene i's scale and shift depend only on genes of earlier blocks; inversion takes `passes` passes."""
    torch.manual_seed(0)
    step = MAFStep(10, 2, hidden=12, passes=3, reverse=reverse, identity_init=False)
    made = step.net
    assert made.passes == 3
    x = torch.randn(10)
    c = torch.tensor([[0.0, 1.0]])
    jac = torch.autograd.functional.jacobian(lambda v: step(v[None], c)[0][0], x)
    block = made.block
    allowed = (block[None, :] < block[:, None]) | torch.eye(10, dtype=torch.bool)
    assert torch.all(jac[~allowed] == 0)
    assert jac[allowed & ~torch.eye(10, dtype=torch.bool)].abs().sum() > 0
    z, _ = step(x[None], c)
    torch.testing.assert_close(step.inverse(z, c), x[None], atol=1e-5, rtol=0)


def test_training_loss_falls_and_sampling_is_seeded(tiny_adata_factory, tmp_path):
    adata = tiny_adata_factory(n_cells=200, n_genes=10, n_types=3, seed=4)
    model = GENERATORS["moe"](label_key="cell_type", **SMALL, n_blocks=1, epochs=8, batch_size=64,
                              learning_rate=1e-2, validation_fraction=0.2, patience=None)
    history = model.fit(adata, seed=0, progress=False)
    assert len(history.train_loss) == 8 and len(history.val_loss) == 8
    assert history.train_loss[-1] < history.train_loss[0] - 1.0
    assert min(history.val_loss) < history.val_loss[0]
    first = model.sample(30, seed=7).X
    # snap_zeros: no sampled value inside a gene's gap (0, smallest non-zero training value)
    smallest = np.where(adata.X > 0, adata.X, np.inf).min(axis=0)
    assert np.all((first == 0) | (first >= smallest - 1e-6))
    np.testing.assert_array_equal(first, model.sample(30, seed=7).X)
    assert not np.array_equal(first, model.sample(30, seed=8).X)
    model.save(tmp_path / "moe")
    restored = MOEGenerator.load(tmp_path / "moe")
    np.testing.assert_allclose(restored.sample(30, seed=7).X, first, atol=1e-5)


def test_paper_preset_fits_and_samples_unconditionally(tiny_adata_factory):
    adata = tiny_adata_factory(n_cells=60, n_genes=10, n_types=3, seed=5)
    model = MOEGenerator(label_key="cell_type", **{**PAPER_SMALL, "epochs": 2})
    history = model.fit(adata, seed=0, progress=False)
    assert len(history.train_loss) == 2 and history.val_loss == []
    synth = model.sample(8, seed=1)
    assert synth.shape == (8, 10) and np.isfinite(synth.X).all()
    assert (synth.obs["label_source"] == "knn").all()


def test_type_actnorm_starts_at_per_type_z_scores():
    torch.manual_seed(0)
    labels = torch.arange(300) % 3
    x = torch.randn(300, 4) * (1 + labels[:, None]) + 5 * labels[:, None]
    context = torch.eye(3)[labels]
    norm = ActNorm(4, context_features=3)
    norm.initialize(x, context, prior=0.0)
    z, logdet = norm(x, context)
    for k in range(3):
        torch.testing.assert_close(z[labels == k].mean(0), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(z[labels == k].std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.inverse(z, context), x, atol=1e-4, rtol=0)


def test_actnorm_moments_accumulated_in_blocks_equal_one_pass():
    """The fit initialises the per-type ActNorm from blocks of cells (no copy of the training part)."""
    torch.manual_seed(1)
    labels = torch.arange(500) % 4
    x = torch.randn(500, 6) * (1 + labels[:, None]) + 3 * labels[:, None]
    context = torch.eye(4)[labels]
    whole, blocks = ActNorm(6, context_features=4), ActNorm(6, context_features=4)
    whole.initialize(x, context)  # prior 5: types shrunk towards all cells
    moments = GroupMoments(6, 4)
    for start in range(0, 500, 128):
        moments.add(x[start : start + 128], context[start : start + 128])
    blocks.initialize_from(moments)
    torch.testing.assert_close(blocks.loc, whole.loc, atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks.log_scale, whole.log_scale, atol=1e-5, rtol=0)
    # and the shrinkage formula itself, for one type, from its definition
    members, prior = x[labels == 2].double(), 5.0
    mean_all, var_all = x.double().mean(0), x.double().var(0, unbiased=False)
    mean = (members.sum(0) + prior * mean_all) / (len(members) + prior)
    var = (((members - mean) ** 2).sum(0) + prior * (var_all + (mean_all - mean) ** 2)) / (len(members) + prior)
    torch.testing.assert_close(blocks.log_scale[2].double(), -0.5 * torch.log(var), atol=1e-5, rtol=0)


def test_bad_hyperparameters_are_clear_errors():
    with pytest.raises(ValueError, match="mask_mode"):
        MOEGenerator(mask_mode="sometimes")
    with pytest.raises(ValueError, match="divisible"):
        MOEGenerator(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"moe: device must be one of \('cpu', 'cuda', 'auto'\), got 'tpu'"):
        MOEGenerator(device="tpu")
    with pytest.raises(ValueError, match="patience"):
        MOEGenerator(validation_fraction=0.0)


@pytest.mark.parametrize("passes", [1, 2, 3, 10])
@pytest.mark.parametrize("reverse", [False, True])
def test_fast_block_made_inverse_equals_the_full_network_inversion(passes, reverse):
    """The one-block-per-pass inversion gives the same cells as `passes` full-network passes."""
    torch.manual_seed(0)
    made = MAFStep(10, 3, hidden=12, passes=passes, reverse=reverse, identity_init=False).net
    with torch.no_grad():
        for p in made.parameters():
            p.add_(0.3 * torch.randn_like(p))
        z = torch.randn(40, 10)
        c = torch.eye(3)[torch.arange(40) % 3]
        fast, reference = made.inverse(z, c), made.inverse_reference(z, c)
        x, _ = made(fast, c)
    assert (fast - z).abs().max() > 0.1, "the MADE should not be the identity in this test"
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, z, atol=1e-5, rtol=1e-5)


def test_fused_attention_equals_the_explicit_softmax():
    torch.manual_seed(0)
    experts = MultiExpertAttention(d_model=8, n_heads=2, n_experts=3)
    tokens = torch.randn(5, 4, 8)
    gate = torch.softmax(torch.randn(5, 3), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(experts(tokens, gate, fused=True), experts(tokens, gate), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", ["default", "paper"])
def test_sampling_path_gives_the_cells_of_the_reference_inverse(config):
    """Sampling (no autograd: fused attention, fast MADE inverse, chunks) = the textbook inverse."""
    flow = _trained_flow(CONFIGS[config], 12, 0 if config == "paper" else 3)
    c = None if config == "paper" else torch.eye(3)[torch.arange(50) % 3]
    fast = flow.sample(50, c, torch.Generator().manual_seed(3), chunk=16)
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    with torch.enable_grad():  # grad mode: the couplings' explicit-softmax (training) path
        for step in reversed(flow.steps):
            if isinstance(step, MAFStep) and step.backend == "made":
                x = step.net.inverse_reference(x, c)  # `passes` full-network evaluations
            else:
                x = step.inverse(x, c)
    torch.testing.assert_close(fast, x.detach(), atol=1e-4, rtol=1e-4)
