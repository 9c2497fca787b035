"""The hospital policy: a typed model per section (org, rooms, on-call, clinical), assembled
into one ``Policy`` by one loader, imported by every component."""

from carematrix.policy.errors import PolicyError, PolicyInvalid
from carematrix.policy.loader import load_policy, validate_policy_dir
from carematrix.policy.model import Policy
from carematrix.policy.org import Staff
from carematrix.policy.rooms import RoomClass

__all__ = [
    "Policy",
    "PolicyError",
    "PolicyInvalid",
    "RoomClass",
    "Staff",
    "load_policy",
    "validate_policy_dir",
]
