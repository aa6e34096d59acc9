"""The worker side of Servo: running attempts of tasks and reporting what happened.

* :mod:`servo.worker.envelope`: the contract with the control plane (envelope, outcome, channel);
* :mod:`servo.worker.runtime`: :func:`~servo.worker.runtime.execute` runs one attempt, and
  :class:`~servo.worker.runtime.Failure` is what users raise for non-retryable failures;
* :mod:`servo.worker.io`: IO managers that store asset values in Blobs;
* :mod:`servo.worker.capture`: capture of stdout, stderr and ``context.log`` per attempt;
* :mod:`servo.worker.code`: fetching and loading deployed code versions;
* :mod:`servo.worker.channel`: control channels (pool pipe, direct call);
* :mod:`servo.worker.pool`: the embedded backend's pool of warm worker processes.

Nothing is imported here, so importing the envelope alone stays cheap.
"""
