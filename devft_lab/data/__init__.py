"""Data, the lowest layer: records on disk, prompt templates, file hashes, the lab benchmark (see data/README.md)."""
from devft_lab.data.records import (DataError, check_instruction, check_mc_item, iter_jsonl,
                                    normalise_text, write_jsonl)
from devft_lab.data.templates import PromptTemplate, get_template
from devft_lab.data.loaders import load_examples, tiny_examples
# partition() itself stays at devft_lab.data.partition.partition: exporting it here would shadow the module
from devft_lab.data.partition import (PARTITIONERS, category_skew, partition_counts, partition_examples,
                                      plot_partition)
