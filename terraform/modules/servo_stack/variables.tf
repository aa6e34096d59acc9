# -- Where the stack lives ------------------------------------------------------------------

variable "project_id" {
  description = "The Google Cloud project that holds every resource of this stack."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "The region of the functions, the worker service, the queues and the scheduler jobs (for example europe-west1)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 or us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name of this stack (functions, service accounts, queues, topics). Give each tenant/workspace stack in a project its own, e.g. \"sv-acme-prod\"."
  type        = string

  validation {
    # 20 characters keep "<prefix>-functions" within the 30 characters of a service account id
    # and "<prefix>-sensor-evaluate-<project number>" within a 63-character DNS label.
    condition     = can(regex("^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$", var.name_prefix))
    error_message = "name_prefix must be 1-20 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "tenant" {
  description = "The tenant this control plane serves (SERVO_TENANT)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.tenant))
    error_message = "tenant must be 1-63 letters, digits, '_' or '-', starting with a letter or digit (the names Servo accepts)."
  }
}

variable "workspace" {
  description = "The workspace of the tenant this control plane serves (SERVO_WORKSPACE)."
  type        = string
  default     = "default"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.workspace))
    error_message = "workspace must be 1-63 letters, digits, '_' or '-', starting with a letter or digit (the names Servo accepts)."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

variable "deletion_protection" {
  description = "Protect the Firestore database and the worker service from deletion by Terraform. Turn off only to tear a stack down."
  type        = bool
  default     = true
}

# -- State and storage ---------------------------------------------------------------------

variable "firestore_database_id" {
  description = "Id of the named Firestore database (SERVO_FIRESTORE_DATABASE); null for \"<name_prefix>-state\"."
  type        = string
  default     = null

  validation {
    condition     = var.firestore_database_id == null || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", coalesce(var.firestore_database_id, "x")))
    error_message = "firestore_database_id must be 4-63 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen (a named database, not \"(default)\")."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database; null for the region of the functions (keeps every transaction in one region)."
  type        = string
  default     = null
}

variable "firestore_point_in_time_recovery" {
  description = "Keep 7 days of Firestore point-in-time recovery (billed as storage)."
  type        = bool
  default     = false
}

variable "bucket_name" {
  description = "Name of the bucket of the ledger, deployments, outputs, logs and projections (SERVO_BUCKET); null for \"<project_id>-<name_prefix>\"."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$", coalesce(var.bucket_name, "xxx")))
    error_message = "bucket_name must be 3-63 lowercase letters, digits, '-' or '_' (no dots), starting and ending with a letter or digit."
  }
}

variable "bucket_location" {
  description = "Location of the bucket; null for the region of the functions (a regional bucket, as docs/gcp.md asks)."
  type        = string
  default     = null
}

variable "storage_prefix" {
  description = "Object name prefix inside the bucket (SERVO_STORAGE_PREFIX); objects live under [prefix/]tenants/<tenant>/workspaces/<workspace>/. Empty for none."
  type        = string
  default     = ""

  validation {
    condition     = var.storage_prefix == "" || can(regex("^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", var.storage_prefix))
    error_message = "storage_prefix must be empty or '/'-separated parts of letters, digits, '_' or '-' without leading or trailing '/'."
  }
}

variable "log_retention_days" {
  description = "Delete attempt logs (blobs/logs/) this many days after they were written; null keeps them."
  type        = number
  default     = 90

  validation {
    condition     = var.log_retention_days == null || coalesce(var.log_retention_days, 1) >= 1
    error_message = "log_retention_days must be null or at least 1."
  }
}

variable "output_retention_days" {
  description = "Delete asset outputs (blobs/outputs/) this many days after they were written; null (the default) keeps them. A committed output is the staged object itself, so a rule deletes current values of assets not re-materialized within the period: set it only for workspaces whose assets are all rebuilt more often than that."
  type        = number
  default     = null

  validation {
    condition     = var.output_retention_days == null || coalesce(var.output_retention_days, 1) >= 1
    error_message = "output_retention_days must be null or at least 1."
  }
}

# -- Deployment of the functions -------------------------------------------------------------

variable "source_bucket" {
  description = "The deploy bucket holding one zip per function (each the contents of functions/<step>/)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", var.source_bucket))
    error_message = "source_bucket must be a bucket name."
  }
}

variable "source_objects" {
  description = "The zip object in source_bucket of each function, keyed by step: trigger, api, dispatch, callback, sweep, tick, sensor_evaluate, compaction. Put a content hash in each name so that a new zip deploys a new revision."
  type        = map(string)

  validation {
    condition = (
      length(setsubtract(keys(var.source_objects), ["trigger", "api", "dispatch", "callback", "sweep", "tick", "sensor_evaluate", "compaction"])) == 0 &&
      length(setsubtract(["trigger", "api", "dispatch", "callback", "sweep", "tick", "sensor_evaluate", "compaction"], keys(var.source_objects))) == 0
    )
    error_message = "source_objects must name exactly the steps trigger, api, dispatch, callback, sweep, tick, sensor_evaluate and compaction."
  }
}

variable "python_runtime" {
  description = "Cloud Functions runtime of the functions."
  type        = string
  default     = "python311"

  validation {
    condition     = can(regex("^python3[0-9]+$", var.python_runtime))
    error_message = "python_runtime must be a Python runtime id such as python311."
  }
}

variable "build_service_account" {
  description = "Service account (projects/P/serviceAccounts/EMAIL) that builds the functions; null for the project's default build account."
  type        = string
  default     = null
}

variable "functions" {
  description = "Per-step overrides of the functions' sizing (min/max instances, memory, CPU, timeout, request concurrency), keyed by step."
  type = map(object({
    min_instance_count               = optional(number)
    max_instance_count               = optional(number)
    available_memory                 = optional(string)
    available_cpu                    = optional(string)
    timeout_seconds                  = optional(number)
    max_instance_request_concurrency = optional(number)
  }))
  default = {}

  validation {
    condition     = length(setsubtract(keys(var.functions), ["trigger", "api", "dispatch", "callback", "sweep", "tick", "sensor_evaluate", "compaction"])) == 0
    error_message = "functions may only have the keys trigger, api, dispatch, callback, sweep, tick, sensor_evaluate and compaction."
  }

  validation {
    condition = alltrue([
      for f in values(var.functions) :
      (f.timeout_seconds == null || (coalesce(f.timeout_seconds, 1) >= 1 && coalesce(f.timeout_seconds, 1) <= 3600)) &&
      (f.min_instance_count == null || coalesce(f.min_instance_count, 0) >= 0) &&
      (f.max_instance_count == null || coalesce(f.max_instance_count, 1) >= 1)
    ])
    error_message = "functions: timeout_seconds must be 1-3600, min_instance_count at least 0 and max_instance_count at least 1."
  }
}

variable "invoker_members" {
  description = "IAM members allowed to call the trigger and api functions (users, groups, service accounts). The functions are never public."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([
      for m in var.invoker_members :
      can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", m))
    ])
    error_message = "invoker_members must be IAM members such as user:a@example.com or group:ops@example.com; allUsers and allAuthenticatedUsers are refused."
  }
}

# -- Control plane settings ------------------------------------------------------------------

variable "dispatch_deadline_seconds" {
  description = "How long a control delivery (dispatch, retry, finalize) may take (SERVO_DISPATCH_DEADLINE_S); also the dispatch function's timeout."
  type        = number
  default     = 600

  validation {
    condition     = var.dispatch_deadline_seconds >= 15 && var.dispatch_deadline_seconds <= 1800
    error_message = "dispatch_deadline_seconds must be 15-1800 (Cloud Tasks' limits for HTTP targets)."
  }
}

variable "execute_deadline_seconds" {
  description = "How long one task attempt may run (SERVO_EXECUTE_DEADLINE_S); also the worker service's request timeout. Set it to the longest task."
  type        = number
  default     = 1800

  validation {
    condition     = var.execute_deadline_seconds >= 15 && var.execute_deadline_seconds <= 1800
    error_message = "execute_deadline_seconds must be 15-1800: Cloud Tasks waits at most 30 minutes for an HTTP target."
  }
}

variable "heartbeat_interval_ms" {
  description = "How often a running attempt reports a heartbeat (SERVO_HEARTBEAT_INTERVAL_MS). Each heartbeat is a callback invocation plus a Firestore read and write, so keep it at 30 s or more."
  type        = number
  default     = 30000

  validation {
    condition     = var.heartbeat_interval_ms >= 1000 && floor(var.heartbeat_interval_ms) == var.heartbeat_interval_ms
    error_message = "heartbeat_interval_ms must be a whole number of at least 1000 (30000 or more is recommended on Google Cloud)."
  }
}

variable "heartbeat_timeout_ms" {
  description = "Silence after which an attempt is presumed lost and retried (SERVO_HEARTBEAT_TIMEOUT_MS)."
  type        = number
  default     = 120000

  validation {
    condition     = floor(var.heartbeat_timeout_ms) == var.heartbeat_timeout_ms && var.heartbeat_timeout_ms > 2 * var.heartbeat_interval_ms
    error_message = "heartbeat_timeout_ms must be a whole number above twice heartbeat_interval_ms, so that one late heartbeat does not retry a healthy attempt."
  }
}

variable "control_plane_settings" {
  description = "Further timings and limits of the control plane (integers); null leaves Servo's default: dispatch_timeout_ms, cancel_grace_ms, max_concurrent_tasks, stale_run_write_ms."
  type = object({
    dispatch_timeout_ms  = optional(number)
    cancel_grace_ms      = optional(number)
    max_concurrent_tasks = optional(number)
    stale_run_write_ms   = optional(number)
  })
  default = {}

  validation {
    condition = alltrue([
      for v in values(var.control_plane_settings) : v == null || (coalesce(v, 0) >= 0 && floor(coalesce(v, 0)) == coalesce(v, 0))
    ])
    error_message = "control_plane_settings values must be null or non-negative whole numbers."
  }
}

variable "topic_prefix" {
  description = "Prefix of the Pub/Sub topics Servo publishes to (SERVO_TOPIC_PREFIX); empty for none."
  type        = string
  default     = ""

  validation {
    condition     = var.topic_prefix == "" || can(regex("^[A-Za-z][A-Za-z0-9._~+%-]*$", var.topic_prefix))
    error_message = "topic_prefix must be empty or start a valid Pub/Sub topic id (a letter, then letters, digits or ._~+%-)."
  }
}

variable "bus_topics" {
  description = "Servo bus topics to create (each as the Pub/Sub topic <topic_prefix><name>); the functions may publish to these and no others."
  type        = set(string)
  default     = []
}

variable "log_level" {
  description = "Log level of the functions (SERVO_LOG_LEVEL)."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "cloud_trace_sample" {
  description = "Fraction of runs traced to Cloud Trace (SERVO_TRACING=gcp, SERVO_TRACE_SAMPLE); null turns tracing off."
  type        = number
  default     = null

  validation {
    condition     = var.cloud_trace_sample == null || (coalesce(var.cloud_trace_sample, 1) > 0 && coalesce(var.cloud_trace_sample, 1) <= 1)
    error_message = "cloud_trace_sample must be null or a fraction in (0, 1]."
  }
}

# -- Queues ------------------------------------------------------------------------------------

variable "control_queue" {
  description = "Rate limits and retry backoff of the control queue (dispatch, retry and finalize messages)."
  type = object({
    max_dispatches_per_second = optional(number, 500)
    max_concurrent_dispatches = optional(number, 1000)
    min_backoff               = optional(string, "0.1s")
    max_backoff               = optional(string, "60s")
    max_doublings             = optional(number, 16)
  })
  default = {}

  validation {
    condition = (
      can(regex("^[0-9]+(\\.[0-9]+)?s$", var.control_queue.min_backoff)) &&
      can(regex("^[0-9]+(\\.[0-9]+)?s$", var.control_queue.max_backoff)) &&
      try(tonumber(trimsuffix(var.control_queue.min_backoff, "s")) < tonumber(trimsuffix(var.control_queue.max_backoff, "s")), false) &&
      var.control_queue.max_doublings >= 1
    )
    error_message = "control_queue: backoffs are durations like \"0.1s\", min_backoff must be below max_backoff and max_doublings at least 1 (exponential backoff)."
  }
}

variable "execute_queue" {
  description = "Dispatch rate and retry backoff of the execute queue (attempts sent to the worker service). Its max_concurrent_dispatches is always the worker capacity (worker_max_instances x worker_processes)."
  type = object({
    max_dispatches_per_second = optional(number, 100)
    min_backoff               = optional(string, "1s")
    max_backoff               = optional(string, "60s")
    max_doublings             = optional(number, 8)
  })
  default = {}

  validation {
    condition = (
      can(regex("^[0-9]+(\\.[0-9]+)?s$", var.execute_queue.min_backoff)) &&
      can(regex("^[0-9]+(\\.[0-9]+)?s$", var.execute_queue.max_backoff)) &&
      try(tonumber(trimsuffix(var.execute_queue.min_backoff, "s")) < tonumber(trimsuffix(var.execute_queue.max_backoff, "s")), false) &&
      var.execute_queue.max_doublings >= 1
    )
    error_message = "execute_queue: backoffs are durations like \"1s\", min_backoff must be below max_backoff and max_doublings at least 1 (exponential backoff)."
  }
}

# -- Worker service ----------------------------------------------------------------------------

variable "worker_image" {
  description = "Container image of the worker service (built from worker_image/Dockerfile), preferably pinned by digest."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^\\s:@]+(:[A-Za-z0-9._-]+)?(@sha256:[a-f0-9]{64})?$", var.worker_image)) && !endswith(var.worker_image, ":latest")
    error_message = "worker_image must be a full image reference (REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG or @sha256:DIGEST), not a :latest tag."
  }
}

variable "worker_cpu" {
  description = "CPU limit of one worker instance (Cloud Run), e.g. \"2\"."
  type        = string
  default     = "2"
}

variable "worker_memory" {
  description = "Memory limit of one worker instance (Cloud Run), e.g. \"4Gi\"."
  type        = string
  default     = "4Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.worker_memory))
    error_message = "worker_memory must be a quantity such as 512Mi or 4Gi."
  }
}

variable "worker_processes" {
  description = "Warm child processes per worker instance (SERVO_WORKER_PROCESSES); the instance's request concurrency is set to the same number, so each request has a process."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_processes >= 1 && var.worker_processes <= 16 && floor(var.worker_processes) == var.worker_processes
    error_message = "worker_processes must be a whole number from 1 to 16."
  }
}

variable "worker_min_instances" {
  description = "Worker instances kept warm."
  type        = number
  default     = 0

  validation {
    condition     = var.worker_min_instances >= 0
    error_message = "worker_min_instances must be at least 0."
  }
}

variable "worker_max_instances" {
  description = "Most worker instances; with worker_processes it sets the worker capacity and so the execute queue's max_concurrent_dispatches."
  type        = number
  default     = 10

  validation {
    condition     = var.worker_max_instances >= 1 && var.worker_max_instances >= var.worker_min_instances
    error_message = "worker_max_instances must be at least 1 and at least worker_min_instances."
  }
}

variable "worker_ingress" {
  description = "Ingress of the worker service. It stays IAM-authenticated either way; the tick and sensor_evaluate functions reach its /evaluate over its URL, so INTERNAL_ONLY needs the functions to egress through a VPC."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.worker_ingress)
    error_message = "worker_ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

# -- Scheduler and sensors ---------------------------------------------------------------------

variable "schedule_time_zone" {
  description = "Time zone of the Cloud Scheduler jobs (their schedules are every N minutes, so this rarely matters)."
  type        = string
  default     = "Etc/UTC"
}

variable "compaction_schedule" {
  description = "Cron schedule of the compaction function (folds new ledger segments into the Parquet projections)."
  type        = string
  default     = "*/5 * * * *"

  validation {
    condition     = length(split(" ", var.compaction_schedule)) == 5
    error_message = "compaction_schedule must be a five-field cron expression."
  }
}

variable "sensor_evaluate_schedule" {
  description = "Cron schedule of the interval-sensor evaluation (as often as the fastest interval sensor); null for no job."
  type        = string
  default     = "* * * * *"

  validation {
    condition     = var.sensor_evaluate_schedule == null || length(split(" ", coalesce(var.sensor_evaluate_schedule, "* * * * *"))) == 5
    error_message = "sensor_evaluate_schedule must be null or a five-field cron expression."
  }
}

variable "gcs_sensor_buckets" {
  description = "Buckets (in this project) watched by gcs_sensor definitions, keyed by bucket name. Each gets a notification config to a topic (the sensor's topic, default servo-gcs-<bucket>) and a push subscription to sensor_evaluate."
  type = map(object({
    topic              = optional(string)
    event_types        = optional(list(string), ["OBJECT_FINALIZE"])
    object_name_prefix = optional(string)
  }))
  default = {}

  validation {
    condition = alltrue(flatten([
      for b in values(var.gcs_sensor_buckets) : [
        for t in b.event_types : contains(["OBJECT_FINALIZE", "OBJECT_METADATA_UPDATE", "OBJECT_DELETE", "OBJECT_ARCHIVE"], t)
      ]
    ]))
    error_message = "gcs_sensor_buckets: event_types must be drawn from OBJECT_FINALIZE, OBJECT_METADATA_UPDATE, OBJECT_DELETE and OBJECT_ARCHIVE."
  }
}

variable "pubsub_sensor_topics" {
  description = "Topics (ids in this project) watched by pubsub_sensor definitions; each gets a push subscription to sensor_evaluate?topic=<id>. create_topic also creates the topic."
  type = map(object({
    create_topic = optional(bool, false)
  }))
  default = {}

  validation {
    condition     = alltrue([for t in keys(var.pubsub_sensor_topics) : can(regex("^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$", t)) && !startswith(t, "goog")])
    error_message = "pubsub_sensor_topics keys must be Pub/Sub topic ids (3-255 characters, starting with a letter, not with \"goog\")."
  }
}

variable "sensor_max_delivery_attempts" {
  description = "Deliveries of a sensor notification before it goes to the dead-letter topic."
  type        = number
  default     = 10

  validation {
    condition     = var.sensor_max_delivery_attempts >= 5 && var.sensor_max_delivery_attempts <= 100
    error_message = "sensor_max_delivery_attempts must be 5-100 (Pub/Sub's limits)."
  }
}
