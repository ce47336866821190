// Sets or removes a client's produce quota on a broker (kafka-python clients have no quota
// API): java -cp '<kafka libs>/*' ClientQuota.java BOOTSTRAP CLIENT_ID BYTES_PER_S|none
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.quota.ClientQuotaAlteration;
import org.apache.kafka.common.quota.ClientQuotaEntity;

public class ClientQuota {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        try (Admin admin = Admin.create(props)) {
            ClientQuotaEntity client =
                new ClientQuotaEntity(Map.of(ClientQuotaEntity.CLIENT_ID, args[1]));
            Double rate = args[2].equals("none") ? null : Double.valueOf(args[2]);
            ClientQuotaAlteration.Op op = new ClientQuotaAlteration.Op("producer_byte_rate", rate);
            admin.alterClientQuotas(List.of(new ClientQuotaAlteration(client, List.of(op))))
                .all()
                .get();
        }
    }
}
