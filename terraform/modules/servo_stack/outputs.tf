output "function_urls" {
  description = "URL of each function, keyed by step (trigger and api are the ones clients call)."
  value       = { for step, function in google_cloudfunctions2_function.step : step => function.service_config[0].uri }
}

output "trigger_url" {
  description = "URL of the trigger function: POST a run request here."
  value       = google_cloudfunctions2_function.step["trigger"].service_config[0].uri
}

output "api_url" {
  description = "URL of the api function (runs, assets, events)."
  value       = google_cloudfunctions2_function.step["api"].service_config[0].uri
}

output "worker_url" {
  description = "URL of the worker service on Cloud Run."
  value       = google_cloud_run_v2_service.worker.uri
}

output "service_account_emails" {
  description = "Email of each service account of the stack: functions, worker, tasks (Cloud Tasks' OIDC identity), scheduler, push (sensor subscriptions)."
  value = {
    functions = google_service_account.functions.email
    worker    = google_service_account.worker.email
    tasks     = google_service_account.tasks.email
    scheduler = google_service_account.scheduler.email
    push      = google_service_account.push.email
  }
}

output "bucket_name" {
  description = "The bucket of the ledger, deployments, outputs, logs and projections (SERVO_BUCKET)."
  value       = google_storage_bucket.data.name
}

output "object_prefix" {
  description = "The object name prefix of this tenant/workspace inside the bucket."
  value       = local.object_root
}

output "firestore_database" {
  description = "The Firestore database id (SERVO_FIRESTORE_DATABASE)."
  value       = google_firestore_database.state.name
}

output "queues" {
  description = "Full names of the Cloud Tasks queues (SERVO_TASKS_QUEUE, SERVO_EXECUTE_QUEUE)."
  value = {
    control = google_cloud_tasks_queue.control.id
    execute = google_cloud_tasks_queue.execute.id
  }
}

output "callback_secret_id" {
  description = "The Secret Manager secret holding SERVO_CALLBACK_SECRET."
  value       = google_secret_manager_secret.callback.id
}

output "sensor_subscriptions" {
  description = "The push subscription of each sensor topic, keyed by topic id."
  value       = { for topic, subscription in google_pubsub_subscription.sensor : topic => subscription.id }
}

output "sensor_dead_letter_subscription" {
  description = "Pull subscription holding the sensor notifications that could not be delivered."
  value       = google_pubsub_subscription.sensor_dead_letter.id
}

output "client_environment" {
  description = "Variables for the servo CLI with SERVO_BACKEND=gcp (deploy, run, status) against this stack; the caller needs its own credentials."
  value = merge(
    { SERVO_BACKEND = "gcp" },
    { for name, value in local.function_environment : name => value if !contains(["SERVO_LOG_LEVEL", "SERVO_ID_TOKEN_SOURCE"], name) },
    local.optional_function_environment,
  )
}
