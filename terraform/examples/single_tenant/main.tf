# One tenant's Servo control plane. Before `terraform apply`:
#   1. enable the APIs listed in terraform/README.md;
#   2. zip each functions/<step>/ folder and upload it to the deploy bucket;
#   3. build and push the worker image (docs/gcp.md, "The worker image").
# Then `servo deploy` the project with the variables of the client_environment output.

terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 7.0.0, < 8.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6.0, < 4.0.0"
    }
  }

  # The state holds the callback secret: keep it in a bucket only the operators can read.
  # backend "gcs" {
  #   bucket = "my-terraform-state"
  #   prefix = "servo/acme"
  # }
}

variable "project_id" {
  description = "The project to deploy to."
  type        = string
}

variable "region" {
  description = "The region of the stack."
  type        = string
  default     = "europe-west1"
}

variable "deploy_bucket" {
  description = "The bucket holding the functions' zips."
  type        = string
}

variable "source_version" {
  description = "The content hash (or release) in the zips' object names, e.g. the git commit."
  type        = string
}

variable "worker_image" {
  description = "The worker image, e.g. europe-west1-docker.pkg.dev/PROJECT/servo/worker@sha256:..."
  type        = string
}

provider "google" {
  project = var.project_id
  region  = var.region
}

module "servo" {
  source = "../../modules/servo_stack"

  project_id  = var.project_id
  region      = var.region
  name_prefix = "sv-acme"
  tenant      = "acme"
  workspace   = "prod"

  source_bucket = var.deploy_bucket
  source_objects = {
    for step in ["trigger", "api", "dispatch", "callback", "sweep", "tick", "sensor_evaluate", "compaction"] :
    step => "servo/${var.source_version}/${step}.zip"
  }

  worker_image         = var.worker_image
  worker_cpu           = "2"
  worker_memory        = "4Gi"
  worker_processes     = 2
  worker_max_instances = 20

  invoker_members = [
    "group:data-platform@acme.example",
  ]

  # A gcs_sensor(bucket="acme-landing", prefix="orders/") and a pubsub_sensor(topic="erp-events").
  gcs_sensor_buckets = {
    "acme-landing" = {
      object_name_prefix = "orders/"
    }
  }
  pubsub_sensor_topics = {
    "erp-events" = {
      create_topic = true
    }
  }

  labels = {
    team = "data-platform"
  }
}

output "trigger_url" {
  description = "POST run requests here."
  value       = module.servo.trigger_url
}

output "api_url" {
  description = "The run and asset API."
  value       = module.servo.api_url
}

output "client_environment" {
  description = "export these for `SERVO_BACKEND=gcp servo deploy|run|status`."
  value       = module.servo.client_environment
}

output "service_account_emails" {
  description = "The stack's service accounts."
  value       = module.servo.service_account_emails
}
