"""The Dapr edge: the gRPC app daprd calls (app.py), call handling around it (calls.py),
request decoding (requests.py), and the protobuf contract (classifier_pb2, from protos/)."""
