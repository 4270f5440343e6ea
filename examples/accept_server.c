/*
 * The event-driven accept server of the AEM requirement document
 * (section 2.1.3), as written there. The only additions: the headers, the
 * server address and port, and the declarations the document forgot
 * (c_addr, id). It registers an asynchronous accept and keeps alive; each
 * incoming connection runs accepted().
 *
 * Built with the old C dialect the document used (implicit int main), and
 * without -Werror: its pointer casts are kept as written.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <aem.h>

#ifndef SERVER_ADDR
#define SERVER_ADDR "127.0.0.1"
#endif
#ifndef SERVER_PORT
#define SERVER_PORT 27811
#endif

/*
 * This event handler is executed upon connection.
 */
void accepted (int jid, int old_sockfd, int new_sockfd)
{
     /* handle accept */
}


main ()
{
     int sfd;
     int err;
     int c_len;
     struct sockaddr_in s_addr;
     struct sockaddr_in c_addr;	/* added: the document uses it undeclared */
     int id;			/* added: likewise */

     c_len = sizeof (c_addr);

     if ((sfd = socket (AF_INET, SOCK_STREAM, IPPROTO_TCP)) < 0) {
           perror ("");
           exit (1);
     }

     bzero ((char *)&s_addr, sizeof (s_addr));
     s_addr.sin_family             = AF_INET;
     s_addr.sin_addr.s_addr = inet_addr (SERVER_ADDR);
     s_addr.sin_port               = htons (SERVER_PORT);


     if (bind (sfd, (struct sockaddr_in *)&s_addr, sizeof (s_addr)) < 0) {
          perror ("");
          exit (1);
     }

     listen (sfd, 5);

     /* Event registration for accept - non blocking system call */
     id = sockasync_accept (sfd, (struct sockaddr *)&c_addr, &c_len,
                                   0, accepted);
     if (id<0) {
          perror ("");
          exit (1);
     }

     enter_keepalive ();
}
