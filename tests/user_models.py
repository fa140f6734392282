"""A user's own model file, as `prunekit run` and `prunekit export` see it ("user_models:make_net"),
and a user's own data loader ("user_models:small_digits")."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def make_net(num_classes: int = 10, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         Residual(width), Residual(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def small_digits():
    """The first 600 / 200 of scikit-learn's digits as (train, test) TensorDatasets."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y, dtype=torch.long)
    return TensorDataset(x[:600], y[:600]), TensorDataset(x[600:800], y[600:800])
