"""BenchMARL's command line (``benchmarl/run.py``) with fastmarl's algorithms registered.

    python -m fastmarl.integrations.benchmarl algorithm=fastmappo task=vmas/balance

Every BenchMARL override works as with ``python benchmarl/run.py`` (``experiment.*``,
``algorithm.*``, ``task.*``, ``model.*``, ``seed``, ``hydra.run.dir``, ``-m`` sweeps); the
algorithm may be any of BenchMARL's or ``fastmappo``, ``fastippo``, ``fastqmix``, ``fastvdn``.
The experiment is a :class:`~fastmarl.integrations.benchmarl.FastExperiment` (BenchMARL's
``Experiment`` unless ``algorithm.compile_update=true``), so it writes BenchMARL's usual outputs
in hydra's run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _missing(package: str, hint: str) -> None:
    print(f"error: python -m fastmarl.integrations.benchmarl needs {package}, which is not installed. "
          f"Install it with: {hint}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    # Without BenchMARL, `python -m` stops before this module runs, on the package's ImportError
    # (one line: "Error while finding module specification ... (ImportError: ... install ...)").
    import fastmarl.integrations.benchmarl as integration

    try:
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import DictConfig, OmegaConf
    except ImportError:
        _missing("hydra-core", integration.INSTALL_HINT)

    import benchmarl
    from benchmarl.hydra_config import (
        load_algorithm_config_from_hydra,
        load_experiment_config_from_hydra,
        load_model_config_from_hydra,
        load_task_config_from_hydra,
    )

    conf_dir = str(Path(benchmarl.__file__).resolve().parent / "conf")

    @hydra.main(version_base=None, config_path=conf_dir, config_name="config")
    def run(cfg: DictConfig) -> None:
        # benchmarl/run.py's hydra_experiment and benchmarl.hydra_config.load_experiment_from_hydra
        # (BenchMARL 1.5.2), building a FastExperiment.
        choices = HydraConfig.get().runtime.choices
        task_name, algorithm_name = choices.task, choices.algorithm
        print(f"\nAlgorithm: {algorithm_name}, Task: {task_name}")
        print("\nLoaded config:\n")
        print(OmegaConf.to_yaml(cfg))
        experiment = integration.FastExperiment(
            task=load_task_config_from_hydra(cfg.task, task_name),
            algorithm_config=load_algorithm_config_from_hydra(cfg.algorithm),
            model_config=load_model_config_from_hydra(cfg.model),
            critic_model_config=load_model_config_from_hydra(cfg.critic_model),
            seed=cfg.seed,
            config=load_experiment_config_from_hydra(cfg.experiment),
        )
        experiment.run()

    run()


if __name__ == "__main__":
    main()
