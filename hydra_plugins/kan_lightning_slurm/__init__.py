"""Hydra instantiates launchers only from the ``hydra_plugins`` package: this makes
:class:`kan_lightning.slurm.SlurmLauncher` one (``conf/launcher/slurm.yaml``). ``kan_lightning.conf``
registers it."""

try:
    from kan_lightning.slurm import SlurmLauncher as _SlurmLauncher
except ImportError:  # no submitit launcher (the [sweep] extra): nothing to offer
    _SlurmLauncher = None

if _SlurmLauncher is not None:

    class SlurmLauncher(_SlurmLauncher):
        __doc__ = _SlurmLauncher.__doc__

# A SLURM job unpickles this launcher before composing nothing more: the run config it resolves
# there needs the kan_* resolvers (imported last: it registers this very class).
import kan_lightning.resolvers  # noqa: E402,F401
