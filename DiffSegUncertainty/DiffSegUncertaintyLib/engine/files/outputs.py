"""The names of the files a run writes (``pipeline.Result.write``) and the Slicer scene layer loads:
one list, torch-free, so the scene layer can import it before torch is installed (docs/cli.md)."""

SEGMENTATION_FILE = "hypotheses.seg.nrrd"
CONSENSUS_FILE = "consensus.nrrd"
SUMMARY_FILE = "summary.json"
#: map role -> file
MAP_FILES = {"mean_probability": "mean_probability.nrrd", "entropy": "entropy.nrrd",
             "mutual_information": "mutual_information.nrrd", "variance": "variance.nrrd"}
OUTPUT_FILES = (SEGMENTATION_FILE, CONSENSUS_FILE, MAP_FILES["mean_probability"], MAP_FILES["entropy"],
                MAP_FILES["mutual_information"], MAP_FILES["variance"], SUMMARY_FILE)
