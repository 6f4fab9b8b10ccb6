"""Python functions: a module with ``handle(subject, payload)``, built into a WASI 0.2
component of the world ``nex:function`` with componentize-py, on the user's side.

``source`` checks the module with Python's own compiler; ``build`` runs componentize-py
and caches the component by digest; ``guest/`` holds what goes into every component
beside the user's module: the entry that adapts ``handle`` to the world's export, and the
``nex`` module of host services.
"""

from nex.pyfunc.build import Built, build_function, default_cache_dir, is_python_function
from nex.pyfunc.source import BuildError

__all__ = ["BuildError", "Built", "build_function", "default_cache_dir", "is_python_function"]
