"""Import-only stand-in for Ascend's acl runtime bindings, which MindSpeed imports at import time."""
