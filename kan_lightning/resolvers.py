"""What the YAML configs in ``conf/`` need besides themselves: the ``kan_*`` OmegaConf resolvers
(:mod:`kan_lightning.resolver_functions`) and the stacked and SLURM launchers made known to Hydra.

Importing this module registers both. Every place that composes configs imports it: the
commands, the sweep checks and the tests that compose configs. (The SLURM launcher's job side
needs the resolvers alone and imports ``resolver_functions``: importing this module from there
would make an import circle through the launcher it registers.)
"""

from __future__ import annotations

import kan_lightning.resolver_functions  # noqa: F401  (registers the resolvers)


def register_launchers() -> None:
    """Hydra finds launchers by scanning the ``hydra_plugins`` package, which misses an editable
    install's: register ours by hand (the SLURM one needs the [sweep] extra)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.kan_lightning_stacked import StackedLauncher

    Plugins.instance().register(StackedLauncher)
    try:
        from hydra_plugins.kan_lightning_slurm import SlurmLauncher
    except ImportError:
        return
    Plugins.instance().register(SlurmLauncher)


register_launchers()
