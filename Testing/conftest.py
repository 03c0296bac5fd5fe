"""Suite-wide settings.

One torch thread: the suite's models are tiny, and on the 2-core CI machine several threads per tiny
convolution cost more in synchronisation than they gain (measured 10-40x slower under contention).
"""

import torch

torch.set_num_threads(1)
