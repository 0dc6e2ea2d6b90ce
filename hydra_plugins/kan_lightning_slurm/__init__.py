"""Hydra instantiates launchers only from the ``hydra_plugins`` package: this makes
:class:`kan_lightning.slurm.SlurmLauncher` one (``conf/launcher/slurm.yaml``). ``kan_lightning.resolvers``
registers it."""

try:
    from kan_lightning.slurm import SlurmLauncher as _SlurmLauncher
except ImportError:  # no submitit launcher (the [sweep] extra): nothing to offer
    _SlurmLauncher = None

if _SlurmLauncher is not None:

    class SlurmLauncher(_SlurmLauncher):
        __doc__ = _SlurmLauncher.__doc__

# A SLURM job unpickles this launcher and then resolves its run config, which needs the kan_*
# resolvers (their own module: kan_lightning.resolvers imports this one to register it).
import kan_lightning.resolver_functions  # noqa: E402,F401
