"""Model registry: versions with lineage hashes and both suites' scores, aliases, promote and rollback."""

from .lineage import RunRecord, read_run
from .store import Registry, default_db_path, resolve_alias, resolve_alias_pinned, resolve_alias_version
from .version import Version, validate_name

__all__ = ["Registry", "RunRecord", "Version", "default_db_path", "read_run", "resolve_alias", "resolve_alias_pinned", "resolve_alias_version", "validate_name"]
