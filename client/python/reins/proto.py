"""The generated ``reins.v1`` message and service modules.

``tasks_pb2`` (``Task``, ``StartTaskRequest``, ``TaskState``, …), ``workers_pb2``
(the ``WorkerService`` messages) and the grpcio service modules ``tasks_pb2_grpc`` /
``workers_pb2_grpc`` (``TaskServiceStub``, …), generated from ``proto/reins/v1`` when the
package was built.
"""

from ._proto import tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc

__all__ = ["tasks_pb2", "tasks_pb2_grpc", "workers_pb2", "workers_pb2_grpc"]
