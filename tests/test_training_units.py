"""Training engine parts: lr schedule, config checks, sampler, node lists, checkpoints, non-finite grads."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from edm2lib import distributed
from edm2lib.nn.layers import MPConv
from edm2lib.nn.networks import Precond
from edm2lib.training import __main__ as cli
from edm2lib.training import checkpoint, compiled, loop, preempt
from edm2lib.training.config import TrainConfig
from edm2lib.training.loss import draw_noise, edm2_loss, learning_rate
from edm2lib.training.stream import ShardedSampler, make_generator
from training_fixtures import TINY_NET, tiny_config, write_latents

torch.set_num_threads(1)


def test_lr_is_zero_on_the_first_step_and_linear_during_warmup():
    assert learning_rate(0, 0.01, 1000, 100) == 0.0
    assert learning_rate(25, 0.01, 1000, 100) == pytest.approx(0.0025)
    assert learning_rate(100, 0.01, 1000, 100) == pytest.approx(0.01)
    assert learning_rate(1000, 0.01, 1000, 100) == pytest.approx(0.01)


def test_lr_decays_as_inverse_sqrt_after_t_ref():
    assert learning_rate(4000, 0.01, 1000, 100) == pytest.approx(0.005)
    assert learning_rate(9000, 0.01, 1000, 100) == pytest.approx(0.01 / 3)
    # EDM2 Eq. 67: XS at 2048 Mi images with t_ref = 70k batches of 2048: alpha_ref / 3.87
    ratio = 0.012 / learning_rate(2048 * 2**20, 0.012, 70000 * 2048, 10_000_000)
    assert ratio == pytest.approx(math.sqrt(2**20 / 70000)) and ratio == pytest.approx(3.87, abs=0.01)


def test_config_rejects_unknown_keys_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training config key.*'bacth'"):
        TrainConfig.from_dict({**tiny_config(tmp_path), "bacth": 8})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"snapshot_nimg": 12}, "'snapshot_nimg' = 12 is not a multiple of the batch 8"),
        ({"checkpoint_nimg": 4}, "'checkpoint_nimg' = 4 is not a multiple of the batch 8"),
        ({"status_nimg": 10}, "'status_nimg' = 10 is not a multiple"),
        ({"duration": 20}, "'duration' = 20 is not a multiple"),
        ({"dtype": "fp8"}, "'dtype' must be one of"),
        ({"compile": "yes"}, "'compile' must be true, false or auto, got 'yes'"),
        ({"lr_ref": -1.0}, "'lr_ref' must be positive"),
        ({"sigma_rels": [0.05, 0.5]}, "'sigma_rels' must be values in"),
        ({"network": {"channel_mult": [1]}}, "needs a 'preset' or 'network'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(tiny_config(tmp_path, **overrides))


def test_batch_must_split_into_ranks_times_batch_gpu(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, batch=12, duration=24, status_nimg=12, batch_gpu=4))
    assert cfg.rounds(1) == 3 and cfg.rounds(3) == 1
    with pytest.raises(ValueError, match="batch 12 is not divisible by world size 2 x batch_gpu 4"):
        cfg.rounds(2)


def test_preset_values_are_defaults_that_the_config_overrides(tmp_path):
    cfg = TrainConfig.from_dict({"data": "d.h5", "run_dir": "r", "preset": "edm2-img512-xs", "lr_ref": 0.02})
    assert (cfg.batch, cfg.t_ref, cfg.P_mean, cfg.lr_ref, cfg.dtype) == (
        2048,
        70000 * 2048,
        -0.4,
        0.02,
        "fp16",
    )
    assert cfg.network["model_channels"] == 128
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_dataset_that_does_not_match_the_network_is_rejected(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, network={"model_channels": 8, "img_resolution": 16}))
    data = SimpleNamespace(resolution=8, channels=3, label_dim=3)
    with pytest.raises(ValueError, match=r"has img_resolution 8 but the config .* asks for 16"):
        cfg.network_kwargs(data)
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, network={"model_channels": 8, "label_dim": 10}))
    with pytest.raises(ValueError, match="has label_dim 3 but"):
        cfg.network_kwargs(data)
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, network={"model_channels": 8, "label_dim": 0}))
    assert cfg.network_kwargs(data)["label_dim"] == 0  # unconditional model on labelled data


def test_global_batch_content_does_not_depend_on_the_split():
    n, batch, nimg = 10, 12, 36  # the step at nimg 36 straddles the epoch boundaries at 40 and 50
    whole = ShardedSampler(n, seed=3, batch_gpu=batch).indices(nimg, 0)
    for world, batch_gpu in [(2, 6), (3, 2), (4, 3)]:
        rounds = batch // (world * batch_gpu)
        parts = [ShardedSampler(n, 3, rank, world, batch_gpu) for rank in range(world)]
        split = [i for r in range(rounds) for s in parts for i in s.indices(nimg, r)]
        assert split == whole
    stream = ShardedSampler(n, seed=3).positions(0, 40)
    assert [sorted(stream[e * n : (e + 1) * n]) for e in range(4)] == [list(range(n))] * 4  # epochs
    assert ShardedSampler(n, seed=3).positions(17, 5) == stream[17:22]  # resume mid-epoch: same stream
    assert stream[:n] != ShardedSampler(n, seed=4).positions(0, n)


def test_slurm_node_lists_expand_like_scontrol():
    assert distributed.expand_nodelist("gpu[01-03,07],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    assert distributed.expand_nodelist("n[8-10]") == ["n8", "n9", "n10"]
    assert distributed.expand_nodelist("a[1],b[2-3]x")[:3] == ["a1", "b2", "b3"]


def test_srun_environment_becomes_a_process_group_description(monkeypatch):
    for key, value in dict(SLURM_PROCID="3", SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="4", SLURM_LOCALID="1",
                           SLURM_STEP_NODELIST="node[7-8]", SLURM_JOB_ID="123456").items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)  # no scontrol: use our parser
    env = distributed._slurm_env()
    assert env == dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="node7", MASTER_PORT="23456")
    monkeypatch.delenv("SLURM_STEP_ID")  # a batch script's shell is one process, whatever SLURM_NTASKS says
    assert distributed._slurm_env() is None


def test_nonfinite_gradients_are_zeroed_and_counted():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))
    a.grad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    b.grad = torch.tensor([0.5, 0.25, -1.0])
    assert int(loop.zero_nonfinite_grads([a, b])) == 3
    assert a.grad.tolist() == [1.0, 0.0, 0.0, 0.0] and b.grad.tolist() == [0.5, 0.25, -1.0]


def test_finite_gradients_pass_the_one_check_unchanged_even_when_their_norm_overflows():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([1.0, -2.0, 3e38, 3e38])  # finite entries whose norm is inf in float32
    b.grad = torch.tensor([0.5, -0.25])
    before = [a.grad.clone(), b.grad.clone()]
    assert int(loop.zero_nonfinite_grads([a, b])) == 0
    assert all(torch.equal(p.grad, g) for p, g in zip([a, b], before))
    a.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert int(loop.zero_nonfinite_grads([a, b])) == 0 and a.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_nan_loss_is_counted_and_never_reaches_a_checkpoint(tmp_path, monkeypatch):
    real_loss = compiled.edm2_loss
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) in (3, 4) else loss

    monkeypatch.setattr(compiled, "edm2_loss", sometimes_nan)
    summary = loop.train(tiny_config(tmp_path, duration=48, checkpoint_nimg=24))
    assert summary["nonfinite_steps"] == 2 and summary["nonfinite_grads"] == 2 * 45747
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["nonfinite_steps"] for s in stats] == [0, 0, 1, 2, 2, 2]
    ckpt = checkpoint.load(checkpoint.find_latest_valid(tmp_path / "run"))
    assert ckpt["state"]["nimg"] == 48 and ckpt["state"]["nonfinite_steps"] == 2
    assert all(torch.isfinite(t).all() for part in ("net", "ema", "optimizer") for t in ckpt[part].values())


def test_checkpoint_refuses_nonfinite_weights(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    state = {"weight": torch.tensor([[1.0, float("nan")], [0.0, 0.0]]), "bias": torch.zeros(2)}
    with pytest.raises(
        ValueError, match="refusing to checkpoint nimg 8: network tensor 'weight' is not finite"
    ):
        checkpoint.save(tmp_path, 8, state, opt, {}, {}, {}, keep=2)
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    loop.train(tiny_config(tmp_path, duration=32, checkpoint_nimg=16, keep_checkpoints=5))
    run = tmp_path / "run"
    assert [n for n, _ in checkpoint.list_checkpoints(run)] == [16, 32]
    newest = checkpoint.checkpoint_dir(run, 32) / "net.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated by a crash
    with pytest.warns(UserWarning, match=r"ckpt-000000000032: net.safetensors does not match its checksum"):
        assert checkpoint.find_latest_valid(run) == checkpoint.checkpoint_dir(run, 16)
    with pytest.warns(UserWarning, match="ckpt-000000000032: net.safetensors does not match"):
        summary = loop.train(tiny_config(tmp_path, duration=40, checkpoint_nimg=16, keep_checkpoints=5))
    assert summary["nimg"] == 40
    assert "resumed from " + str(checkpoint.checkpoint_dir(run, 16)) in (run / "log.txt").read_text()
    assert [n for n, _ in checkpoint.list_checkpoints(run)] == [16, 32, 40]
    checkpoint.verify(checkpoint.checkpoint_dir(run, 32))  # rewritten by the resumed run
    for nimg in (16, 32, 40):
        (checkpoint.checkpoint_dir(run, nimg) / checkpoint.SUMS).unlink()
    with pytest.warns(UserWarning, match="no SHA256SUMS file") as record:
        assert checkpoint.find_latest_valid(run) is None
    assert len(record) == 3
    refused = pytest.raises(ValueError, match=r"no checkpoint verifies .* refusing to start over")
    with refused, pytest.warns(UserWarning):
        loop.train(tiny_config(tmp_path, duration=48))
    with pytest.raises(FileNotFoundError, match="ckpt-000000000048: checkpoint directory not found"):
        checkpoint.load(checkpoint.checkpoint_dir(run, 48))


def test_old_checkpoints_are_pruned_to_keep_the_newest(tmp_path):
    summary = loop.train(tiny_config(tmp_path, duration=40, checkpoint_nimg=8, keep_checkpoints=2))
    assert summary["status"] == "done" and summary["exit_code"] == 0
    assert [n for n, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [32, 40]
    again = loop.train(tiny_config(tmp_path, duration=40))  # finished runs stay finished
    assert again["nimg"] == 40
    with pytest.raises(
        ValueError,
        match=r"ckpt-000000000040: this run was trained with another identity \(changed: seed: 0 -> 1\)",
    ):
        loop.train(tiny_config(tmp_path, duration=48, seed=1))


def test_per_example_draws_give_the_shared_edm2_loss():
    torch.manual_seed(0)
    net = Precond(8, 3, 3, **TINY_NET).eval()  # eval: no in-place weight normalisation between calls
    x, labels = torch.randn(3, 3, 8, 8), torch.eye(3)
    sigma, noise = draw_noise(range(40, 43), (3, 8, 8), P_mean=-0.4, P_std=1.0, seed=7)
    ours = edm2_loss(net, x, labels, sigma=sigma, noise=noise)
    for i, q in enumerate(range(40, 43)):  # the official draw order from each example's own generator
        g = make_generator("cpu", "noise", 7, q)
        shared = edm2_loss(net, x[i : i + 1], labels[i : i + 1], -0.4, 1.0, 0.5, generator=g)
        torch.testing.assert_close(ours[i : i + 1], shared, rtol=1e-6, atol=1e-6)
    again = draw_noise(range(41, 43), (3, 8, 8), P_mean=-0.4, P_std=1.0, seed=7)
    assert torch.equal(again[0], sigma[1:]) and torch.equal(again[1], noise[1:])  # split-invariant


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "cfg.yaml"
    bad.write_text(json.dumps({**tiny_config(tmp_path), "batch": 8, "snapshot_nimg": 12}))
    assert cli.main(["--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: config key 'snapshot_nimg' = 12 is not a multiple of the batch 8"
    assert cli.main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: training config not found" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(tiny_config(tmp_path, duration=16)))
    assert cli.main(["--config", str(good), "--set", "data=/nonexistent.h5"]) == 1
    assert capsys.readouterr().err.startswith("error: /nonexistent.h5: no such data set")


def test_latent_data_draws_a_fresh_sample_per_example_and_trains(tmp_path):
    data = write_latents(tmp_path / "latents.h5")
    trainer = loop.Trainer(TrainConfig.from_dict(tiny_config(tmp_path, data=str(data), duration=16)))
    x, y = trainer._examples(range(20, 24))
    x_tail, y_tail = trainer._examples(range(21, 24))
    assert x.shape == (4, 4, 8, 8) and y.shape == (4, 3)
    assert torch.equal(x[1:], x_tail) and torch.equal(y[1:], y_tail)  # per-example seeds: split-invariant
    index = trainer.sampler.positions(20, 1)[0]
    mean = trainer.dataset.raw([index])[:, :4]
    assert not torch.equal(
        x[:1], trainer.dataset.codec.encode_batch(torch.cat([mean, 0 * mean], 1))
    )  # sampled
    summary = trainer.run()
    assert summary["nimg"] == 16 and math.isfinite(summary["last_status"]["loss"])


def fake_scontrol(tmp_path, monkeypatch, requeue_flag: int):
    """An `scontrol` on PATH that records its arguments and answers like SLURM."""
    record = tmp_path / "calls.txt"
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {record}\n'
        f'case "$1 $2" in "show job") echo "JobId=$4 JobName=train Requeue={requeue_flag} Restarts=0";; '
        '"show hostnames") echo gpu07; echo gpu08;; esac\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    return record


def test_preemption_requeues_a_requeueable_slurm_job(tmp_path, monkeypatch):
    record = fake_scontrol(tmp_path, monkeypatch, requeue_flag=1)
    messages = []
    assert preempt.maybe_requeue("auto", messages.append)
    assert record.read_text().splitlines() == ["show job -o 4242", "requeue 4242"]
    assert messages == ["requeued SLURM job 4242"]
    assert distributed.first_host("gpu[07-08]") == "gpu07"  # via scontrol show hostnames


def test_preemption_does_not_requeue_a_job_submitted_without_requeue(tmp_path, monkeypatch):
    record = fake_scontrol(tmp_path, monkeypatch, requeue_flag=0)
    messages = []
    assert not preempt.maybe_requeue("auto", messages.append)
    assert "requeue 4242" not in record.read_text() and "not requeueable" in messages[0]
    assert not preempt.maybe_requeue("never", messages.append)
    monkeypatch.delenv("SLURM_JOB_ID")
    assert not preempt.maybe_requeue("always", messages.append)  # not under SLURM at all


@pytest.mark.parametrize(("dtype", "recorded"), [("bf16", {"compute_dtype": "bfloat16"}), ("fp16", {})])
def test_reduced_precision_trains_on_cpu(tmp_path, dtype, recorded):
    summary = loop.train(tiny_config(tmp_path, duration=16, dtype=dtype))
    assert math.isfinite(summary["last_status"]["loss"]) and summary["nonfinite_grads"] == 0
    state = checkpoint.load(checkpoint.find_latest_valid(tmp_path / "run"))["state"]
    assert state["network"]["use_fp16"] == (dtype == "fp16")  # fp16 runs in fp32 on a CPU (official rule)
    assert state["network"].get("compute_dtype") == recorded.get("compute_dtype")


def test_bf16_on_a_gpu_without_bf16_is_one_line_error_before_training(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ValueError, match=r"'dtype' = 'bf16' but cuda:0 \(Tesla V100\).*use dtype fp16") as e:
        loop.check_dtype("bf16", torch.device("cuda:0"))
    assert "\n" not in str(e.value)
    for dtype, device in [("fp16", "cuda:0"), ("fp32", "cuda:0"), ("bf16", "cpu")]:
        loop.check_dtype(dtype, torch.device(device))  # possible: no error


def _reference_step_grads(net, images, labels, sigma, noise, scale):
    """The textbook step: forced weight normalisation inside a training-mode forward, loss sum backward."""
    net.zero_grad(set_to_none=True)
    loss = edm2_loss(net.train(), images, labels, sigma_data=net.sigma_data, sigma=sigma, noise=noise)
    (loss.sum() * scale).backward()
    return loss.detach().sum(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _engine_step_grads(net, step, images, labels, sigma, noise, scale):
    """The Trainer's way: forced weight normalisation once, then the forward with it off, via `LossStep`."""
    net.zero_grad(set_to_none=True)
    mpconvs = [m for m in net.modules() if isinstance(m, MPConv)]
    for m in mpconvs:
        if m.weight_norm == "forced":
            m.force_weight_norm_()
        m.train(False)
    total = step(net, images, labels, sigma, noise, net.sigma_data, scale)
    for m in mpconvs:
        m.train(True)
    return total, {n: p.grad.clone() for n, p in net.named_parameters()}


def _tiny_batch(net, n=4):
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    labels = torch.nn.functional.one_hot(torch.arange(n) % net.label_dim, net.label_dim).float()
    sigma, noise = draw_noise(range(n), tuple(images.shape[1:]), -0.4, 1.0, 0)
    return images, labels, sigma, noise


@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_engine_step_numerics_equal_the_eager_step(backend):
    torch.manual_seed(0)
    ref_net = Precond(img_resolution=8, img_channels=3, label_dim=3, **TINY_NET)
    net = Precond(img_resolution=8, img_channels=3, label_dim=3, **TINY_NET)
    net.load_state_dict(ref_net.state_dict())
    batch = _tiny_batch(net)
    step = compiled.LossStep(backend is not None, backend=backend or "inductor")
    for _ in range(2):  # the second call reuses the traced graph
        ref_loss, ref_grads = _reference_step_grads(ref_net, *batch, scale=0.25)
        loss, grads = _engine_step_grads(net, step, *batch, scale=0.25)
        assert step.is_compiled == (backend is not None)
        if backend is None:  # the same operations in the same order: bit-identical
            assert torch.equal(loss, ref_loss) and all(torch.equal(grads[k], ref_grads[k]) for k in grads)
        else:
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
            for k in grads:
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref_net.parameters()))


def test_a_compile_failure_falls_back_to_eager_with_one_warning_and_eager_results(tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args):
            torch.rand(7)  # consumes the global RNG, as a half-done compiled call might
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\n(many more lines)")

        return call

    eager = loop.train(tiny_config(tmp_path, run_dir=str(tmp_path / "eager"), duration=24, compile=False))
    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    with pytest.warns(UserWarning) as caught:
        fallback = loop.train(
            tiny_config(tmp_path, run_dir=str(tmp_path / "fallback"), duration=24, compile=True)
        )
    mine = [w for w in caught if "torch.compile failed" in str(w.message)]
    assert len(mine) == 1 and "\n" not in str(mine[0].message)
    assert "training continues eager (RuntimeError: InductorError: CppCompileError" in str(mine[0].message)
    assert fallback["last_status"]["loss"] == eager["last_status"]["loss"]
    a, b = (checkpoint.load(checkpoint.find_latest_valid(tmp_path / d)) for d in ("eager", "fallback"))
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])


def test_a_compile_refused_up_front_is_one_warning_too(monkeypatch):
    def unsupported(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python version")

    monkeypatch.setattr(compiled.torch, "compile", unsupported)
    with pytest.warns(UserWarning, match=r"torch.compile failed, training continues eager \(RuntimeError"):
        step = compiled.LossStep(True)
    assert not step.is_compiled and "not supported" in step.failure


def test_compile_auto_means_cuda_only():
    assert compiled.wants_compile("auto", torch.device("cuda:0"))
    assert not compiled.wants_compile("auto", torch.device("cpu"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiled.wants_compile(True, cpu) and not compiled.wants_compile(False, cuda)


def test_the_cpu_compile_keeps_the_network_layout(monkeypatch):
    seen = []

    def recording(fn, **kwargs):
        seen.append(kwargs)
        return fn

    monkeypatch.setattr(compiled.torch, "compile", recording)
    compiled.LossStep(True, device="cpu")
    compiled.LossStep(True, device=torch.device("cuda", 0))
    cpu, cuda = (kw["options"] for kw in seen)
    assert cpu == {"fallback_random": True, "layout_optimization": False}  # channels-last: 0.55x eager
    assert cuda == {"fallback_random": True} and all(kw["dynamic"] is False for kw in seen)
