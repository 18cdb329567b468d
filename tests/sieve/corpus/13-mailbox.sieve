require ["fileinto", "mailbox"];
fileinto :create "Created/Here";
