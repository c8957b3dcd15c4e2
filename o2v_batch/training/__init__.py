"""Training: `o2v-batch train` and the SageMaker Estimator's fit.

train.py is the training loop (epochs, early stopping, the best epoch kept);
data.py reads and samples its pairs. Where a trained model goes is artifacts'.

May import `artifacts`, `inputs`, `model`, `io` and `errors`; never the execution
layer, the jobs, serve or the command line.
"""
