"""The network and what describes it, with no I/O.

network.py is the Object2Vec network only; hyperparameters.py holds SageMaker's
hyperparameters, each value checked by its kind in hyperparameter_checks.py;
weights.py knows, without torch, which tensors and shapes a model file holds and how
much work a forward pass is; tokens.py holds checked token ids (TokenIds), their
truncation, padding and device batches; devices.py parses device strings and counts
GPUs without torch.

At the bottom of the project: imports nothing of it but `errors`.
"""
