"""bench.py's FLOP accounting, against the count by hand (no timing is asserted)."""
import torch

import bench
import losses
import models


def test_pixelcnn_training_step_flops_match_the_count_by_hand():
    device = torch.device('cpu')
    p = models.PixelCNN()  # the course size, as bench.training_workloads builds it
    step = bench.train_step([p], lambda x: (losses.cross_entropy(p(x), x), torch.zeros(())), device)
    per_image = bench.count_flops(step) / bench.BATCH
    px, c = 28 * 28, 32
    embed = px * c * 9 * 9 * 2              # 9x9 type-A convolution, 1 -> 32 channels
    blocks = 18 * px * c * c * 3 * 3 * 2    # 9 residual blocks of two 3x3 convolutions, 32 -> 32
    out = px * c * 3 * 3 * 2                # 3x3 output convolution, 32 -> 1
    # backward: input and weight gradients (2x forward), except the input gradient of the first layer
    assert per_image == 3 * (embed + blocks + out) - embed
