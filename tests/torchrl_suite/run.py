"""Run TorchRL's own tests with fastmarl's drop-ins swapped in (see README.md beside this file).

    python tests/torchrl_suite/run.py /path/to/torchrl-checkout [pytest args...]

The checkout needs TorchRL's ``test/`` folder and ``pytest.ini`` (its ``torchrl/`` source is not
used: the installed TorchRL is what runs). Without test paths in the pytest args the files of
:data:`DEFAULT_TESTS` run. ``FASTMARL_SWAP=0`` runs the same tests on stock TorchRL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# What fastmarl replaces: PPO (ClipPPOLoss), the value estimators (GAE, MultiAgentGAE and the
# functional), MAPPO/IPPO, QMixerLoss, the loss-module tests (which build ClipPPOLoss and the
# estimators among others) and the multi-agent modules (QMixer, VDNMixer, MultiAgentMLP).
DEFAULT_TESTS = (
    "test/objectives/test_ppo.py",
    "test/objectives/test_values.py",
    "test/objectives/test_mappo.py",
    "test/objectives/test_dqn.py::TestQMixer",
    "test/objectives/test_loss_module.py",
    "test/modules/test_multiagent_models.py",
)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    checkout = Path(argv[0]).resolve()
    if not (checkout / "test" / "objectives").is_dir():
        print(f"run.py: error: {checkout} has no test/objectives folder (a TorchRL checkout is expected)",
              file=sys.stderr)
        return 2
    args = argv[1:]
    has_paths = any(a.startswith("test/") or a.startswith(str(checkout)) for a in args)
    paths = [] if has_paths else list(DEFAULT_TESTS)
    env = dict(os.environ)
    # The plugin, and TorchRL's test helpers (``_objectives_common``, imported by bare name).
    extra = [str(HERE), str(checkout / "test" / "objectives"), str(checkout / "test")]
    env["PYTHONPATH"] = os.pathsep.join(extra + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else extra)
    cmd = [sys.executable, "-m", "pytest", "-p", "fastmarl_swap", "-p", "no:cacheprovider",
           *paths, *args]
    return subprocess.call(cmd, cwd=checkout, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
