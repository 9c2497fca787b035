"""The hospital policy: one model, one loader, imported by every component."""

from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.loader import load_policy, validate_policy_dir
from carematrix.policy.model import Policy, RoomClass, Staff

__all__ = [
    "Policy",
    "PolicyError",
    "PolicyInvalid",
    "RoomClass",
    "Staff",
    "load_policy",
    "validate_policy_dir",
]
