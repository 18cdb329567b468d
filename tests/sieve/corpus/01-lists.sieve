require ["fileinto", "imap4flags"];
# mailing lists into their own folder, read
if exists "list-id" {
  addflag "\\Seen";
  fileinto "Lists";
  stop;
}
keep;
