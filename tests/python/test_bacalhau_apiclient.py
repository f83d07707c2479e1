"""Bacalhau's own Python client (bacalhau-apiclient 1.4.1, as published on PyPI) against a real `cod serve`.

The client is generated code with known quirks (it decodes some keys case-sensitively, sends the stop reason
as a query parameter and updates nodes with POST /nodes); Cod is expected to work with it as it is.
Run by tests/run.sh with COD_BIN pointing at the built binary.
"""

import base64
import json
import os
import subprocess
import tempfile
import time
import unittest

import bacalhau_apiclient as bc

HELLO_WASM = os.path.join(os.path.dirname(__file__), "..", "e2e", "fixtures", "hello.wasm")
# (module (memory 1) (func (export "_start") (loop (br 0)))): runs until stopped.
ENDLESS_WASM = bytes.fromhex("0061736d01000000" "010401600000" "03020100" "0503010001"
                             "070a01065f73746172740000" "0a090107000340" "0c000b0b")


def wait_for(what, condition, timeout=30.0):
    """Polls `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class CodNode:
    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="cod-pyclient-")
        ready = os.path.join(self.tmp.name, "ready.json")
        self.log = open(os.path.join(self.tmp.name, "log"), "w")
        self.proc = subprocess.Popen(
            [os.environ.get("COD_BIN", "target/debug/cod"), "serve",
             "--data-dir", os.path.join(self.tmp.name, "data"),
             "--api-host", "127.0.0.1", "--api-port", "0", "--publisher-port", "0",
             "--listen", "/ip4/127.0.0.1/tcp/0", "--ready-file", ready],
            stdout=self.log, stderr=self.log)

        def read_ready():
            if self.proc.poll() is not None:
                raise AssertionError("cod exited early:\n" + open(self.log.name).read())
            try:
                with open(ready) as f:
                    return json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                return None

        info = wait_for("the node's ready file", read_ready)
        self.api = "http://" + info["api"]
        self.node_id = info["node_id"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.tmp.cleanup()


class BacalhauApiClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = CodNode()
        config = bc.Configuration()
        config.host = cls.node.api
        client = bc.ApiClient(config)
        cls.orchestrator = bc.OrchestratorApi(client)
        cls.ops = bc.OpsApi(client)

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def wasm_job(self, env=None, module=None):
        if module is None:
            with open(HELLO_WASM, "rb") as f:
                module = f.read()
        url = "data:application/wasm;base64," + base64.b64encode(module).decode()
        task = bc.Task(
            name="main",
            engine=bc.SpecConfig(type="wasm", params={"EntryModule": "/main.wasm", "Parameters": ["py"]}),
            input_sources=[bc.InputSource(target="/main.wasm", source=bc.SpecConfig(type="inline", params={"URL": url}))],
            publisher=bc.SpecConfig(type="local"),
            result_paths=[bc.ResultPath(name="outputs", path="/outputs")],
            env=env or {},
        )
        return bc.Job(type="batch", count=1, tasks=[task])

    def test_submit_wait_and_read_everything_back(self):
        put = self.orchestrator.orchestratorput_job(bc.ApiPutJobRequest(job=self.wasm_job({"GREETING": "py"})))
        job_id = put.job_id
        self.assertTrue(job_id.startswith("j-"), put)

        def completed():
            got = self.orchestrator.orchestratorget_job(job_id, include="executions,history")
            return got if got.job.state.state_type in ("Completed", "Failed") else None

        got = wait_for("the job to finish", completed)
        self.assertEqual(got.job.state.state_type, "Completed")
        execution = got.executions.items[0]
        self.assertEqual(execution.compute_state.state_type, 9)
        self.assertIn("hello py", execution.run_output.stdout)
        self.assertIn("GREETING=py", execution.run_output.stdout)

        jobs = self.orchestrator.orchestratorlist_jobs(limit=10)
        self.assertIn(job_id, [j.id for j in jobs.items])
        history = self.orchestrator.orchestratorjob_history(job_id)
        self.assertTrue(any(h.event.topic == "Submission" for h in history.items))
        executions = self.orchestrator.orchestratorjob_executions(job_id, "created_at")
        self.assertEqual(len(executions.items), 1)
        results = self.orchestrator.orchestratorjob_results(job_id)
        self.assertEqual(results.items[0].type, "urlDownload")
        self.assertTrue(results.items[0].params["URL"].endswith(".tar.gz"))

    def test_stop_takes_its_reason_from_the_query(self):
        put = self.orchestrator.orchestratorput_job(bc.ApiPutJobRequest(job=self.wasm_job(module=ENDLESS_WASM)))
        wait_for("the job to run", lambda: self.orchestrator.orchestratorget_job(put.job_id).job.state.state_type
                 == "Running")
        self.orchestrator.orchestratorstop_job(put.job_id, reason="py says stop")
        job = wait_for("the job to stop", lambda: (lambda j: j if j.state.state_type == "Stopped" else None)(
            self.orchestrator.orchestratorget_job(put.job_id).job))
        self.assertEqual(job.state.message, "py says stop")
        # Stopping it again is a no-op; stopping a finished job is refused with Bacalhau's error body.
        self.orchestrator.orchestratorstop_job(put.job_id, reason="again")
        done = self.orchestrator.orchestratorput_job(bc.ApiPutJobRequest(job=self.wasm_job()))
        wait_for("the job to finish", lambda: self.orchestrator.orchestratorget_job(done.job_id).job.state.state_type
                 in ("Completed", "Failed"))
        with self.assertRaises(bc.rest.ApiException) as refused:
            self.orchestrator.orchestratorstop_job(done.job_id, reason="done anyway")
        self.assertEqual(refused.exception.status, 409)
        self.assertIn("Message", json.loads(refused.exception.body))

    def test_nodes_and_agent(self):
        nodes = self.orchestrator.orchestratorlist_nodes()
        self.assertEqual([n.info.node_id for n in nodes.nodes], [self.node.node_id])
        node = self.orchestrator.orchestratorget_node(self.node.node_id)
        self.assertEqual(node.node.info.node_id, self.node.node_id)
        self.assertIsNotNone(self.ops.agentalive())
        self.assertTrue(self.ops.agentversion().git_version.startswith("v"))
        self.assertEqual(self.ops.agentnode().node_id, self.node.node_id)

    def test_invalid_spec_is_a_400_naming_the_field(self):
        job = bc.Job(type="batch", tasks=[bc.Task(name="main", engine=bc.SpecConfig(type="wasm", params={}))])
        with self.assertRaises(bc.rest.ApiException) as bad:
            self.orchestrator.orchestratorput_job(bc.ApiPutJobRequest(job=job))
        self.assertEqual(bad.exception.status, 400)
        self.assertIn("EntryModule", json.loads(bad.exception.body)["Message"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
