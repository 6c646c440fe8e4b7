"""The floor under the service's throughput: a Flask app that reads the upload and answers, doing nothing else.

``benchmarks/serve_load.py`` runs it under the same gunicorn configuration as the service, so the
difference between the two is what decoding, inference and the service's own code cost.
"""

from flask import Flask, request

app = Flask(__name__)


@app.post("/predict")
def predict():
    request.get_data()
    return {"predictions": []}
