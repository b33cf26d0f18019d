"""A small model with optimizer state for the in-process checkpoint tests."""

import torch


def model_and_optimizer(seed=0):
    """A small MLP after one AdamW step, so the optimizer has state to save."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return model, optimizer
