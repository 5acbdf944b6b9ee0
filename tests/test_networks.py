"""Block/UNet/Precond: parity with the official tiny network, layout, magnitude preservation, precision."""

import json
import math

import pytest
import torch

from edm2lib.nn.layers import normalize
from edm2lib.nn.networks import Block, Precond
from edm2lib.training.loss import edm2_loss

TOL = 1e-5


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute error relative to the reference's largest magnitude."""
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@pytest.fixture()
def ref_net(tiny_reference):
    net = Precond(**tiny_reference["config"])
    net.load_state_dict(tiny_reference["state_dict"], strict=True)
    return net


def test_names_registration_order_and_init_match_official(tiny_reference):
    torch.manual_seed(tiny_reference["seed"])
    net = Precond(**tiny_reference["config"])
    assert [n for n, _ in net.named_parameters()] == tiny_reference["param_names"]
    assert [n for n, _ in net.named_buffers()] == tiny_reference["buffer_names"]
    state = net.state_dict()
    assert list(state) == list(tiny_reference["state_dict"])
    # Same seed, same construction order: every random tensor is bit-identical (the gains were perturbed).
    for key, value in state.items():
        if value.ndim > 0:
            assert torch.equal(value, tiny_reference["state_dict"][key]), key


def test_eval_outputs_match_official(ref_net, tiny_reference):
    ref_net.eval()
    with torch.no_grad():
        D, logvar = ref_net(
            tiny_reference["x"], tiny_reference["sigma"], tiny_reference["labels"], return_logvar=True
        )
    assert rel_err(D, tiny_reference["D"]) <= TOL
    assert rel_err(logvar, tiny_reference["logvar"]) <= TOL
    assert D.shape == (4, 3, 16, 16) and logvar.shape == (4, 1, 1, 1)


def test_train_loss_weights_and_gradients_match_official(ref_net, tiny_reference):
    ref_net.train()
    torch.manual_seed(tiny_reference["loss_seed"])
    loss = edm2_loss(
        ref_net,
        tiny_reference["x"],
        tiny_reference["labels"],
        tiny_reference["P_mean"],
        tiny_reference["P_std"],
    )
    assert rel_err(loss, tiny_reference["train_loss"]) <= TOL
    after = ref_net.state_dict()
    for key, value in tiny_reference["train_state_dict_after_forward"].items():
        assert rel_err(after[key], value) <= TOL, key
    (loss.sum() / loss.shape[0]).backward()
    for name, param in ref_net.named_parameters():
        ref = tiny_reference["grads"][name]  # a strided sample of the official gradient, its max and norm
        grad = param.grad.flatten()
        assert rel_err(grad[ref["index"]], ref["value"]) <= TOL, name
        assert abs(grad.abs().max().item() - ref["absmax"]) <= TOL * ref["absmax"], name
        assert abs(grad.double().norm().item() - ref["norm"]) <= TOL * ref["norm"], name


def test_loss_draws_from_the_given_generator_only(ref_net, tiny_reference):
    x, labels = tiny_reference["x"], tiny_reference["labels"]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = edm2_loss(ref_net.eval(), x, labels, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG was not touched
    b = edm2_loss(ref_net, x, labels, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(5)
    c = edm2_loss(ref_net, x, labels)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_missing_unexpected_and_misshapen_keys_are_named(tiny_reference):
    net = Precond(**tiny_reference["config"])
    state = dict(tiny_reference["state_dict"])
    del state["unet.out_gain"]
    state["unet.bogus.weight"] = torch.zeros(1)
    state["logvar_linear.weight"] = torch.zeros(2, 128)
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(state, strict=True)
    message = str(info.value)
    assert "unet.out_gain" in message and "unet.bogus.weight" in message and "logvar_linear.weight" in message


def test_config_round_trips_through_json(tiny_reference):
    net = Precond(**tiny_reference["config"], channels_per_head=32, compute_dtype="bfloat16")
    config = json.loads(json.dumps(net.config))
    rebuilt = Precond(**config)
    assert config == net.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items()
    }
    assert rebuilt.unet.enc["8x8_block0"].num_heads == 2


def test_attention_equals_the_einsum_formulation_on_official_qkv_layout():
    torch.manual_seed(0)
    block = Block(96, 96, 32, flavor="dec", attention=True, channels_per_head=32).eval()
    x = torch.randn(2, 96, 4, 4)
    B, C, H, W = x.shape
    heads, Ch = block.num_heads, C // block.num_heads
    # The official formulation: channel index = head * 3 * Ch + c * 3 + j; einsum attention.
    y = block.attn_qkv(x).reshape(B, heads, Ch, 3, H * W)
    q, k, v = normalize(y, dim=2).unbind(3)
    w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(Ch)).softmax(dim=3)
    expected = block.attn_proj(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(B, C, H, W))
    assert heads == 3
    assert rel_err(block._attention(x), expected) <= 1e-6


def test_fresh_network_outputs_c_skip_times_input():
    torch.manual_seed(0)
    net = Precond(8, 3, 0, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 2.0])
    D = net(x, sigma)
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.allclose(D, c_skip.reshape(-1, 1, 1, 1) * x, atol=1e-7)


def test_block_activations_keep_unit_magnitude_in_an_initialised_unet():
    torch.manual_seed(0)
    unet = Precond(
        32, 3, 10, model_channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16, 8]
    ).unet
    with torch.no_grad():
        for param in unet.parameters():
            if param.ndim == 0:  # emb_gain and out_gain start at 0; the property is about gains at 1
                param.fill_(1)
    stds = {}
    hooks = [
        module.register_forward_hook(lambda m, i, out, name=name: stds.__setitem__(name, out.std().item()))
        for name, module in unet.named_modules()
        if isinstance(module, Block)
    ]
    x = torch.randn(16, 3, 32, 32)  # unit variance, as c_in makes the U-Net input
    labels = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    with torch.no_grad():
        out = unet(x, torch.linspace(-2, 2, 16), labels)
    for h in hooks:
        h.remove()
    assert len(stds) == 8 + 13  # encoder: 2 + 3 + 3 blocks; decoder: 5 + 4 + 4 blocks
    assert all(0.5 <= s <= 2 for s in stds.values()), stds
    assert 0.5 <= out.std().item() <= 2


def test_reduced_precision_paths_run_on_cpu_close_to_float32(ref_net, tiny_reference):
    x, sigma, labels = tiny_reference["x"], tiny_reference["sigma"], tiny_reference["labels"]
    ref_net.eval()
    assert ref_net.activation_dtype(torch.device("cpu")) == torch.float32  # official: fp16 only on CUDA
    assert ref_net.activation_dtype(torch.device("cuda")) == torch.float16
    with torch.no_grad():
        D32 = ref_net(x, sigma, labels)
        ref_net.compute_dtype = "bfloat16"
        Dbf = ref_net(x, sigma, labels)
        Dforced = ref_net(x, sigma, labels, force_fp32=True)
    assert Dbf.dtype == torch.float32
    assert torch.equal(Dforced, D32)
    assert 0 < rel_err(Dbf, D32) < 0.05


def test_unknown_compute_dtype_and_keywords_are_refused_by_name():
    with pytest.raises(ValueError, match="compute_dtype 'float8'"):
        Precond(8, 3, 0, model_channels=16, channel_mult=[1], compute_dtype="float8")
    with pytest.raises(ValueError, match=r"unknown network keyword\(s\) \['dropuot'\]"):
        Precond(8, 3, 0, model_channels=16, channel_mult=[1], dropuot=0.1)


def test_missing_labels_mean_a_zero_label_and_unconditional_nets_ignore_labels(ref_net, tiny_reference):
    x, sigma = tiny_reference["x"], tiny_reference["sigma"]
    ref_net.eval()
    with torch.no_grad():
        assert torch.equal(ref_net(x, sigma), ref_net(x, sigma, torch.zeros(4, 10)))
        uncond = Precond(16, 3, 0, model_channels=16, channel_mult=[1, 2], num_blocks=1).eval()
        assert "unet.emb_label.weight" not in uncond.state_dict()
        assert torch.equal(uncond(x, sigma), uncond(x, sigma, torch.eye(10)[:4]))
        D = ref_net(x, 0.5)  # a scalar sigma broadcasts over the batch
    assert D.shape == x.shape


def test_precond_forward_traces_as_one_graph_without_breaks(ref_net, tiny_reference):
    import torch._dynamo

    x, sigma, labels = tiny_reference["x"], tiny_reference["sigma"], tiny_reference["labels"]
    explanation = torch._dynamo.explain(ref_net.train())(x, sigma, labels, return_logvar=True)
    torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
