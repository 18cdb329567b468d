require ["copy"];
if address :domain :is "from" "far.test" {
  redirect :copy "archive@backup.test";
}
if header :contains "subject" "alert" {
  redirect "oncall@pager.test";
}
