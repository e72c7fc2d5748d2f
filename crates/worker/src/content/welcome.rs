//! The built-in page of the embedded default config, like nginx's welcome page:
//! proof that River runs, and where to go next.

pub fn page() -> String {
    let version = river_ipc::VERSION;
    format!(
        "<!DOCTYPE html>\n<html>\n<head><title>Welcome to River</title></head>\n<body>\n\
         <h1>Welcome to River {version}</h1>\n\
         <p>If you see this page, the River reverse proxy is installed and working.</p>\n\
         <p>You are running on River's embedded default configuration. Write your own \
         in River's KDL schema and start River with <code>river -c /path/to/river.kdl</code>; \
         check it first with <code>river --validate -c /path/to/river.kdl</code>.</p>\n\
         <p>Documentation: <a href=\"https://github.com/memorysafety/river\">River's user manual</a> \
         and <code>man river</code>.</p>\n\
         </body>\n</html>\n"
    )
}
