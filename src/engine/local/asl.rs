//! Placeholder with the interpreter's interface; replaced by the real interpreter.
use serde_json::Value;
use std::collections::BTreeMap;
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct DefinitionError;
pub struct StateMachine;
impl StateMachine {
    pub fn from_json(_d: &str, _s: &BTreeMap<String, String>) -> Result<Self, DefinitionError> {
        Ok(Self)
    }
    pub fn start(&self, input: Value) -> Cursor {
        Cursor {
            state: String::new(),
            input,
            retries: vec![],
        }
    }
    pub async fn step(&self, _c: Cursor, _x: &ExecutionContext, _t: &dyn TaskInvoker) -> Step {
        Step::Succeeded(Value::Null)
    }
}
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub state: String,
    pub input: Value,
    pub retries: Vec<u32>,
}
pub struct ExecutionContext {
    pub execution_name: String,
    pub execution_input: Value,
    pub start_time: String,
    pub state_machine_name: String,
}
#[async_trait::async_trait]
pub trait TaskInvoker: Send + Sync {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure>;
}
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub error: String,
    pub cause: String,
}
#[derive(Debug, PartialEq)]
pub enum Step {
    Continue(Cursor),
    Sleep {
        duration: std::time::Duration,
        then: Cursor,
    },
    Succeeded(Value),
    Failed {
        error: String,
        cause: String,
    },
}
