"""Shared by the multi-label test files: three findings, an optimizer and a tiny thesis CNN."""

FINDINGS3 = ["Cardiomegaly", "Effusion", "Mass"]
ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
SMALL_CNN = {
    "_target_": "cxr.models.thesis_cnn.ThesisCNN",
    "in_channels": 1,
    "image_size": 32,
    "filters": [4, 8],
    "hidden": 8,
}
