"""The ``reins.v1`` stubs, generated from ``proto/`` when the package is built.

``setup.py`` (the build hook) writes ``tasks_pb2``, ``workers_pb2`` (with ``.pyi``) and
their ``_grpc`` modules here; nothing generated is committed. Import them through
:mod:`reins.proto`.
"""

try:
    from . import tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc
except ImportError as err:  # a checkout imported without being built
    raise ImportError(
        "reins/_proto/ holds no generated stubs: install the package "
        "(`pip install client/python`), or generate them in the source tree with "
        "`python client/python/setup.py generate`"
    ) from err

__all__ = ["tasks_pb2", "tasks_pb2_grpc", "workers_pb2", "workers_pb2_grpc"]
