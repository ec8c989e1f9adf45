"""An in-process TF Serving `PredictionService` over a SavedModel: a test fixture, not a product feature.

TF Serving's binary cannot be installed on the CI machine; this servicer answers
Predict and GetModelMetadata the way TF Serving does, so the real gRPC client code
(`keras_lc.serving.TFServingClient`) is exercised end to end over a socket.
"""

from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc


class SavedModelServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, saved_model_dir, name):
        self.name = name
        self.model = tf.saved_model.load(str(saved_model_dir))
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
        self.signature_defs = proto.meta_graphs[0].signature_def

    def _check_name(self, request, context):
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request.model_spec.name}")

    def Predict(self, request, context):
        self._check_name(request, context)
        name = request.model_spec.signature_name or "serving_default"
        if name not in self.model.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature name: \"{name}\" not found")
        signature = self.model.signatures[name]
        try:
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            outputs = signature(**inputs)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e).split("\n")[0][:500] + " " + str(e)[-300:])
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def GetModelMetadata(self, request, context):
        self._check_name(request, context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(request.model_spec)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signature_defs.items():
            if not key.startswith("__"):
                defs.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(defs)
        return response


def start_server(saved_model_dir, name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(SavedModelServicer(saved_model_dir, name),
                                                                       server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
