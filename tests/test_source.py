import dataclasses

import pytest

from afs_core.source import Source, detect_rank, detect_world_size


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, None),
        ({"RANK": "2", "SLURM_PROCID": "5"}, 2),
        ({"PMI_RANK": "4"}, 4),
        ({"OMPI_COMM_WORLD_RANK": "1", "SLURM_PROCID": "0"}, 1),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),
        ({"LOCAL_RANK": "1", "GROUP_RANK": "0"}, 1),
        ({"LOCAL_RANK": "3", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 7),
        ({"LOCAL_RANK": "1"}, None),  # alone it says nothing about the node
        ({"SLURM_PROCID": "6"}, 6),
        ({"JSM_NAMESPACE_RANK": "2"}, 2),
        ({"KERAS_DISTRIBUTION_PROCESS_ID": "1"}, 1),
        ({"RANK": "not-a-number", "PMI_RANK": "3"}, 3),
    ],
)
def test_rank_is_read_from_launcher_variables_in_order(env, rank):
    assert detect_rank(env) == rank


def test_world_size_from_first_variable_set():
    assert detect_world_size({"SLURM_NTASKS": "16", "PMI_SIZE": "4"}) == 16
    assert detect_world_size({}) is None


def test_a_source_written_down_names_every_field_and_reads_back_the_same():
    source = Source(host="node-7", pid=4242, rank=3, world_size=8)
    data = source.to_dict()
    assert set(data) == {field.name for field in dataclasses.fields(Source)}  # a field added is written too
    assert Source.from_dict(data) == source
