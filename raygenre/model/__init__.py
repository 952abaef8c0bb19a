"""The three networks (ANN, CNN, LSTM) and the model artifact (model.safetensors + model.json, the one loader)."""
