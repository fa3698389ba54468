def test_sleep_job_runs_to_success(admin, dispatcher):
    resp = admin.submit("sleep", {"duration": 0.2, "steps": 4, "write_file": True})
    assert resp.status_code == 202, resp.get_json()
    job = resp.get_json()["data"]
    assert job["status"] in ("queued", "running")
    done = admin.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 100
    assert [f["name"] for f in done["files"]] == ["sleep.txt"]
    body = admin.get(f"/api/v1/jobs/{job['id']}/files/sleep.txt")
    assert body.status_code == 200 and body.data.startswith(b"job ")
