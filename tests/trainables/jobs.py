"""A complete training job for tests: artifact paths point nowhere unless a test gives them."""

from trainables.job import TrainJob


def make_job(**changes) -> TrainJob:
    return TrainJob(
        method="scan",
        method_config={},
        seed=0,
        num_clusters=2,
        fit_embeddings="-",
        eval_embeddings="-",
        neighbors=None,
        dataset="digits",
        data_root="-",
        fit_split="all",
        eval_split="all",
        subset=None,
        backbone="efficientnet_lite0",
        backbone_weights=None,
        work_dir="-",
        init_state=None,
        gcd_split=None,
    ).replace(**changes)
