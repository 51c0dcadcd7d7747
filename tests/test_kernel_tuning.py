"""The launch-configuration table (fastmarl/ops/tuning.py) and the PPO launchers' workspace.

The table decides block sizes from feature sizes only; an override reaches the launchers (what
the sweep relies on); a table file named by FASTMARL_TUNED_CONFIGS replaces the committed
entries. The PPO workspace is reused call after call, its tickets reset by the kernels, and
never cached while torch.compile traces.
"""

import json

import pytest
import torch
from helpers import assert_close, requires_interpreter

from fastmarl.ops import tuning
from fastmarl.ops.ppo import cpu as ppo_cpu


def test_defaults_candidates_and_keys():
    assert tuning.key_of("gae_fwd", bf=8) == "BF8"
    assert tuning.key_of("ppo_clip", bm=4) == "BM4"
    assert tuning.key_of("qmix_bwd", be=32, bh=64) == "BE32-BH64"
    for family, blocks in [("gae_fwd", dict(bf=4)), ("ppo_critic", dict(bm=8)), ("qmix_fwd", dict(be=32, bh=16))]:
        candidates = tuning.candidates(family, **blocks)
        assert candidates[0] == tuning.default_config(family, **blocks)
        assert 2 <= len(candidates) <= 9 and len({tuple(sorted(c.items())) for c in candidates}) == len(candidates)
    assert tuning.default_config("gae_fwd", bf=64) == {"BT": 32, "num_warps": 4}
    assert tuning.default_config("ppo_clip", bm=256) == {"BN": 16, "num_warps": 4}
    with pytest.raises(ValueError, match="unknown kernel family"):
        tuning.key_of("gea", bf=1)


def test_table_file_and_override(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    table = {"table": {"cpu": {"gae_fwd": {"BF8": {"BT": 64, "num_warps": 2}}}}}
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("FASTMARL_TUNED_CONFIGS", str(path))
    tuning.reload()
    try:
        assert tuning.launch_config("gae_fwd", cpu, bf=8) == {"BT": 64, "num_warps": 2}
        assert tuning.launch_config("gae_fwd", cpu, bf=4) == tuning.default_config("gae_fwd", bf=4)
        with tuning.override({"gae_fwd": {"BT": 16}}):
            assert tuning.launch_config("gae_fwd", cpu, bf=8) == {"BT": 16, "num_warps": 4}
        assert tuning.launch_config("gae_fwd", cpu, bf=8)["BT"] == 64
        with pytest.raises(ValueError, match="unknown kernel families"):
            with tuning.override({"gae": {}}):
                pass
        path.write_text("not json")
        tuning.reload()
        with pytest.raises(RuntimeError, match="FASTMARL_TUNED_CONFIGS"):
            tuning.launch_config("gae_fwd", cpu, bf=8)
    finally:
        monkeypatch.delenv("FASTMARL_TUNED_CONFIGS")
        tuning.reload()


def _clip_outputs(N, M, G):
    scalars = [torch.full((), float("nan")) for _ in range(5)]
    return dict(loss=scalars[0], clip_fraction=scalars[1], kl_approx=scalars[2], max_ratio=scalars[3],
                mean_ratio=scalars[4], ess=torch.full((M,), float("nan")),
                adv_mean=torch.full((G,), float("nan")), adv_std=torch.full((G,), float("nan")))


@requires_interpreter
def test_ppo_workspace_is_reused_and_its_tickets_reset():
    from fastmarl.ops.ppo import triton as launchers

    launchers.clear_workspaces()
    low, high = torch.tensor(0.8).log(), torch.tensor(1.2).log()
    buffers = []
    # Calls of different sizes in a row: each one's last programs must find the tickets at 0
    # (a ticket left over would make no program the last one: the loss would stay NaN).
    for N, M in [(70, 3), (33, 3), (130, 2), (70, 3)]:
        lp, prev, adv = (torch.randn(N, M, dtype=torch.float64) * 0.3 for _ in range(3))
        out = _clip_outputs(N, M, M)
        launchers.ppo_clip_fwd(lp.float(), prev.float(), adv.float(), low, high, M, True, "mean", **out, block_n=16)
        ref = ppo_cpu.ppo_clip_forward(lp, prev, adv, low.double(), high.double(), M, True, "mean")
        assert_close(out["loss"], ref[0], atol=1e-5, rtol=1e-5, name="loss")
        assert_close(out["ess"], ref[3], atol=1e-5, rtol=1e-5, name="ess")
        work = launchers._WORKSPACES[("ppo_clip", torch.device("cpu"), None)]
        assert work[:2].view(torch.int32).tolist() == [0, 0]  # both tickets reset
        buffers.append(work)
    # one buffer, grown once (130 rows need more partials than 70), then reused
    assert buffers[0] is buffers[1] and buffers[2] is buffers[3] and buffers[1] is not buffers[2]


@requires_interpreter
def test_ppo_workspace_is_not_cached_for_traced_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastmarl.ops.ppo import triton as launchers

    launchers.clear_workspaces()
    with FakeTensorMode() as mode:
        like = mode.from_tensor(torch.zeros(4, 3))
        assert not launchers._reusable(like)
        buffer = launchers._buffer("ppo_clip", like, 10)
        assert buffer.shape == (10,)
    assert not launchers._WORKSPACES
    assert launchers._reusable(torch.zeros(2))
