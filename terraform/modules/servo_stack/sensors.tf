# Sensor plumbing: Pub/Sub push subscriptions deliver GCS and Pub/Sub notifications to
# sensor_evaluate?topic=T (the topic tells it which sensors listen). A notification that keeps
# failing goes to a dead-letter topic, where a pull subscription keeps it for inspection.

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

locals {
  # servo.sdk.event_sensors.default_gcs_topic: the topic a gcs_sensor listens on by default.
  gcs_sensor_topics = {
    for bucket, config in var.gcs_sensor_buckets : bucket => coalesce(config.topic, "servo-gcs-${bucket}")
  }

  sensor_evaluate_uri = google_cloudfunctions2_function.step["sensor_evaluate"].service_config[0].uri

  # Every topic with a push subscription to sensor_evaluate, keyed by topic id.
  sensor_subscriptions = merge(
    { for bucket, topic in local.gcs_sensor_topics : topic => google_pubsub_topic.gcs_sensor[bucket].id },
    { for topic in keys(var.pubsub_sensor_topics) : topic => "projects/${var.project_id}/topics/${topic}" },
  )
}

resource "google_pubsub_topic" "sensor_dead_letter" {
  project = var.project_id
  name    = "${var.name_prefix}-sensor-dead-letter"
  labels  = local.labels
}

resource "google_pubsub_subscription" "sensor_dead_letter" {
  project                    = var.project_id
  name                       = "${var.name_prefix}-sensor-dead-letter"
  topic                      = google_pubsub_topic.sensor_dead_letter.id
  message_retention_duration = "604800s"
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_topic" "gcs_sensor" {
  for_each = local.gcs_sensor_topics

  project = var.project_id
  name    = each.value
  labels  = local.labels
}

resource "google_pubsub_topic" "pubsub_sensor" {
  for_each = { for topic, config in var.pubsub_sensor_topics : topic => config if config.create_topic }

  project = var.project_id
  name    = each.key
  labels  = local.labels
}

# Cloud Storage publishes a bucket's notifications as the project's storage service agent.
resource "google_pubsub_topic_iam_member" "gcs_publisher" {
  for_each = google_pubsub_topic.gcs_sensor

  project = var.project_id
  topic   = each.value.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "gcs_sensor" {
  for_each = var.gcs_sensor_buckets

  bucket             = each.key
  topic              = google_pubsub_topic.gcs_sensor[each.key].id
  payload_format     = "JSON_API_V1"
  event_types        = each.value.event_types
  object_name_prefix = each.value.object_name_prefix

  depends_on = [google_pubsub_topic_iam_member.gcs_publisher]
}

resource "google_pubsub_subscription" "sensor" {
  for_each = local.sensor_subscriptions

  project = var.project_id
  name    = "${var.name_prefix}-sensor-${each.key}"
  topic   = each.value
  labels  = local.labels

  # sensor_evaluate may call the worker to evaluate a sensor function.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.sensor_dead_letter.id
    max_delivery_attempts = var.sensor_max_delivery_attempts
  }

  push_config {
    push_endpoint = "${local.sensor_evaluate_uri}?topic=${urlencode(each.key)}"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.sensor_evaluate_uri
    }
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.function_invoker,
    google_pubsub_topic.pubsub_sensor,
  ]
}

# Pub/Sub mints the push tokens of the push account, and moves undeliverable messages: it
# acknowledges them on the sensor subscriptions and publishes them to the dead-letter topic.
resource "google_service_account_iam_member" "pubsub_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "pubsub_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.sensor_dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_dead_letter_subscriber" {
  for_each = google_pubsub_subscription.sensor

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
