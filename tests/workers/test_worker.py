"""Jobs enqueued by name and run by a real `emailservice worker`; the scheduler's periodic jobs."""

from __future__ import annotations

import time

import pytest
from rq.job import Job, JobStatus
from rq_scheduler import Scheduler

from app.jobs import HEARTBEAT, QUEUES, Jobs, PeriodicJob, QueueName
from app.telemetry import HEARTBEAT_KEY
from tests.support import run_cli


@pytest.fixture(autouse=True)
def clean_redis(empty_queues, redis_client):
    def clean():
        scheduler = Scheduler(connection=redis_client)
        for job in scheduler.get_jobs():
            scheduler.cancel(job)
        redis_client.delete(HEARTBEAT_KEY)

    clean()
    yield
    clean()


def test_a_job_enqueued_by_name_runs_on_every_queue(env, redis_client, tmp_path):
    jobs = [Jobs(redis_client).queue(name).enqueue("workers.jobs.heartbeat") for name in QUEUES]
    started = time.time()
    result = run_cli(["worker", "--burst"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for job in jobs:
        job.refresh()
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value() >= started
    assert float(redis_client.get(HEARTBEAT_KEY)) >= started


def test_a_worker_on_one_queue_leaves_the_others(env, redis_client, tmp_path):
    send = Jobs(redis_client).queue(QueueName.SEND).enqueue("workers.jobs.heartbeat")
    sync = Jobs(redis_client).queue(QueueName.SYNC).enqueue("workers.jobs.heartbeat")
    result = run_cli(["worker", "--burst", "send"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Job.fetch(send.id, connection=redis_client).get_status() == JobStatus.FINISHED
    assert Job.fetch(sync.id, connection=redis_client).get_status() == JobStatus.QUEUED


def test_scheduler_enqueues_its_periodic_jobs_once_however_often_it_starts(
    fresh_migrated_env, redis_client, tmp_path
):
    # A database of its own: the periodic sync acts on every account there is.
    env = fresh_migrated_env
    for _ in range(2):
        result = run_cli(["scheduler", "--burst"], env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    periodic = [
        "periodic-changes-resume",
        "periodic-heartbeat",
        "periodic-outbox-sweep",
        "periodic-sync",
        "periodic-sync-resume",
    ]
    assert sorted(job.id for job in Scheduler(connection=redis_client).get_jobs()) == periodic
    assert sorted(Jobs(redis_client).queue(QueueName.DEFAULT).job_ids) == [
        "periodic-changes-resume",
        "periodic-heartbeat",
        "periodic-sync",
        "periodic-sync-resume",
    ]
    assert Jobs(redis_client).queue(QueueName.SEND).job_ids == ["periodic-outbox-sweep"]

    started = time.time()
    assert run_cli(["worker", "--burst"], env, cwd=tmp_path).returncode == 0
    assert float(redis_client.get(HEARTBEAT_KEY)) >= started
    # rq-scheduler re-arms the jobs for their next interval.
    assert sorted(job.id for job in Scheduler(connection=redis_client).get_jobs()) == periodic


def test_a_changed_interval_replaces_the_scheduled_job(redis_client):
    from workers.schedule import register_periodic_jobs

    scheduler = Scheduler(connection=redis_client)
    register_periodic_jobs(scheduler, [PeriodicJob("periodic-heartbeat", HEARTBEAT, 60)])
    register_periodic_jobs(scheduler, [PeriodicJob("periodic-heartbeat", HEARTBEAT, 30)])
    [job] = scheduler.get_jobs()
    assert job.meta["interval"] == 30


def test_every_job_of_the_catalogue_is_a_function_of_workers_jobs():
    """The web app names jobs by dotted path (it never imports workers/): each must resolve."""
    import importlib

    from app.jobs import CATALOGUE

    for spec in CATALOGUE:
        module, _, name = spec.func.rpartition(".")
        assert module == "workers.jobs", spec.func
        assert callable(getattr(importlib.import_module(module), name)), spec.func
        assert spec.queue in QUEUES
