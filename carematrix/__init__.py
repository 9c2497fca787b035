"""CareMatrix core: the policy model shared by the Synapse modules and the appservice,
plus the deployment tooling behind the ``carematrix`` command."""

__version__ = "0.1.0"
